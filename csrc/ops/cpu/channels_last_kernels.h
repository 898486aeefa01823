// CPU kernels of the fused op on channels-last tensors (channels_last, channels_last_3d): the
// input x (B, I..., C), the reduced tensor z (B, O..., R), the output y and grad_output gy
// (B, O..., C), with the channels innermost. There a pixel's R reduced values and a group's C/G
// channels are contiguous, so no copy to the contiguous layout is needed:
//   * forward: the kernel of a block of 64 output pixels and one group is generated as a
//     product Wt[p, t] = sum_k z[p, k] * St[k, t] (+ bias[t]) into a buffer of pixels x taps
//     that stays in L1 (span::product, with z's rows as they are in memory and St, the group's
//     span weight transposed, as the streamed operand); the aggregation
//     y[p, c] = sum_t Wt[p, t] * x[p + offset(t), c] broadcasts a tap's weight and reads the
//     group's channels of the tapped input pixel as whole vectors, for a few pixels at once
//     (independent accumulators);
//   * input gradient, per block of input rows: the kernel of the output rows they receive from
//     is generated the same way, then each input pixel gathers W[o, t] * gy[o, c] over the
//     output pixels o whose window covers it (with a stride, input columns s apart share
//     their taps, so blocks of them run together);
//   * the gradients of z, span weight and bias, per block of 64 output pixels: the kernel's
//     gradient dW[p, t] = sum_c gy[p, c] * x[p + offset(t), c] (a dot product over a group's
//     channels: Lanes taps' vectors of products are reduced to one vector of sums at a time),
//     then gz, gS and gb as products with dW (span::product).
// Each result element is one sum in a fixed order whatever the split between threads; gS and
// gb are added to the caller's partial sums of its unit of pixels.
//
// Like row_kernels.h, this file is compiled once per instruction set, inside that instruction
// set's target region (row_kernels.h includes it).

#pragma once

#ifndef INVOLUTION_CPU_ISA
#error "include kernel_table.h, set the target, define INVOLUTION_CPU_ISA, then include this"
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "kernel_table.h"
#include "simd.h"
#include "span_kernels.h"

namespace involution {
namespace cpu {
namespace INVOLUTION_CPU_ISA {

namespace channels_last {

// Where output pixel p of the flattened (B, O...) grid reads its taps: the first input pixel
// (depth, height, width) of its window, and its sample.
struct Pixel {
  int64_t b, od, oh, ow;
};

inline Pixel decode(const Geometry& g, int64_t p) {
  Pixel q;
  q.ow = p % g.out[2];
  p /= g.out[2];
  q.oh = p % g.out[1];
  p /= g.out[1];
  q.od = p % g.out[0];
  q.b = p / g.out[0];
  return q;
}

// The taps kw in [lo, hi) of width start iw0 that fall inside the input's width.
inline void width_taps(const Geometry& g, int64_t iw0, int64_t& lo, int64_t& hi) {
  const int64_t d = g.dilation[2], W = g.in[2], K = g.kernel[2];
  lo = iw0 >= 0 ? 0 : std::min(K, ceil_div(-iw0, d));
  hi = iw0 >= W ? 0 : std::min(K, floor_div(W - 1 - iw0, d) + 1);
  hi = std::max(hi, lo);
}

// acc[PB][NV] over the valid (kd, kh) rows `rows` (input row offsets into x, tap offsets into
// Wt) and taps kw in [lo, hi), for PB pixels whose windows start at input columns iw0[pb] and
// whose weights are Wt rows w[pb]; then stores the channels to y rows out[pb].
template <int PB, int NV, typename V, typename scalar_t, typename acc_t>
inline void aggregate_block(const Geometry& g, const int64_t* row_x, const int64_t* row_t,
                            int64_t rows, int64_t lo, int64_t hi, const scalar_t* x,
                            const int64_t* iw0, const acc_t* const* w, scalar_t* const* out) {
  constexpr int Lanes = sizeof(V) / sizeof(acc_t);
  const int64_t C = g.channels, d = g.dilation[2];
  V acc[PB][NV];
  for (int pb = 0; pb < PB; ++pb)
    for (int v = 0; v < NV; ++v) acc[pb][v] = V{};
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* xr = x + row_x[r];
    const int64_t t0 = row_t[r];
    for (int64_t kw = lo; kw < hi; ++kw) {
      for (int pb = 0; pb < PB; ++pb) {
        const V s = span::splat<V>(w[pb][t0 + kw]);
        const scalar_t* xp = xr + (iw0[pb] + kw * d) * C;
        for (int v = 0; v < NV; ++v) acc[pb][v] += s * load_as<V>(xp + v * Lanes);
      }
    }
  }
  for (int pb = 0; pb < PB; ++pb)
    for (int v = 0; v < NV; ++v) store(out[pb] + v * Lanes, acc[pb][v], Lanes);
}

// The kernel of M consecutive pixels (z's rows, R apart) for one group: W[m, t] =
// sum_k z[m, k] * St[k, t] + bias[t] (rows ldw apart; St: the group's (R, ldw) transposed span
// weight, zero past T; bias null: none).
template <typename V, typename scalar_t, typename acc_t>
inline void generate(int64_t M, int64_t R, int64_t T, const scalar_t* z, const acc_t* St,
                     int64_t ldw, const acc_t* bias, acc_t* W) {
  span::product<false, V>(M, R, z, R, 1, static_cast<const acc_t*>(nullptr), St, ldw, 0, T, W, ldw,
                          0, true);
  if (bias == nullptr) return;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t t = 0; t < T; ++t) W[m * ldw + t] += bias[t];
}

// Whether a weight of output pixel px (its row w of taps, width taps [lo, hi) inside) at a tap
// outside the input is not finite.
template <typename acc_t>
inline bool padding_tap_not_finite(const Geometry& g, const Pixel& px, const acc_t* w, int64_t lo,
                                   int64_t hi) {
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  bool bad = false;
  for (int64_t kd = 0; kd < KD; ++kd) {
    const int64_t id = px.od * g.stride[0] - g.padding[0] + kd * g.dilation[0];
    for (int64_t kh = 0; kh < KH; ++kh) {
      const int64_t ih = px.oh * g.stride[1] - g.padding[1] + kh * g.dilation[1];
      const bool row_inside = id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1];
      const acc_t* wr = w + (kd * KH + kh) * KW;
      for (int64_t kw = 0; kw < KW; ++kw)
        if (!row_inside || kw < lo || kw >= hi) bad |= !std::isfinite(wr[kw]);
    }
  }
  return bad;
}

inline int64_t gcd(int64_t a, int64_t b) {
  while (b != 0) {
    const int64_t t = a % b;
    a = b;
    b = t;
  }
  return a;
}

// The output rows [lo, hi) along one axis whose windows reach input rows [i0, i1).
struct Span {
  int64_t lo, hi;
};
inline Span output_span(int64_t i0, int64_t i1, int64_t pad, int64_t K, int64_t d, int64_t s,
                        int64_t O) {
  const int64_t lo = std::max<int64_t>(0, ceil_div(i0 + pad - (K - 1) * d, s));
  const int64_t hi = std::min<int64_t>(O, floor_div(i1 - 1 + pad, s) + 1);
  return {lo, std::max(lo, hi)};
}

// Lanes vectors v[i] -> one vector whose lane i is the sum of v[i]'s lanes, by a tree of
// pairwise sums (3 (Lanes - 1) shuffles and adds for Lanes sums, where summing each vector's
// lanes one by one takes about 2 Lanes operations each). Each level adds the even and odd
// lanes of the concatenation of two vectors: lanes [0, L/2) then hold partial sums of the
// first, the rest of the second; after log2(Lanes) levels lane i holds v[i]'s sum.
template <typename V, size_t... I>
inline V even_lanes(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}
template <typename V, size_t... I>
inline V odd_lanes(V a, V b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I + 1)...);
}
template <int Lanes, typename V>
inline V lane_sums(V* v) {
  if constexpr (Lanes == 8 && sizeof(V) == 32 &&
                std::is_same_v<std::decay_t<decltype(v[0][0])>, float>) {
    // 8 floats: pairwise sums within each 128-bit half (vshufps, as vhaddps does) for two
    // levels, then the two halves added: 21 single-cycle operations for 8 sums.
    auto pairs = [](V a, V b) {
      return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
             __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
    };
    const V u0 = pairs(pairs(v[0], v[1]), pairs(v[2], v[3]));
    const V u1 = pairs(pairs(v[4], v[5]), pairs(v[6], v[7]));
    return __builtin_shufflevector(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
  }
  constexpr auto lanes = std::make_index_sequence<Lanes>();
  for (int n = Lanes; n > 1; n /= 2) {
    for (int i = 0; i < n / 2; ++i)
      v[i] = even_lanes(v[2 * i], v[2 * i + 1], lanes) + odd_lanes(v[2 * i], v[2 * i + 1], lanes);
  }
  return v[0];
}

}  // namespace channels_last

// y for output pixels [p0, p1) (all groups). St: per group the (R, ldw) transposed span weight,
// columns past the T taps zero; bias: G*T values or null.
template <typename scalar_t, typename acc_t, int Lanes>
void fused_forward_channels_last(const Geometry& g, int64_t R, const acc_t* St, int64_t ldw,
                                 const acc_t* bias, const scalar_t* x, const scalar_t* z,
                                 scalar_t* y, int64_t p0, int64_t p1) {
  using V = typename Simd<acc_t, Lanes>::type;
  using namespace channels_last;
  constexpr int64_t kPixels = kChannelsLastPixels;  // Wt: kPixels x ldw
  const int64_t C = g.channels, G = g.groups, CG = g.channels_per_group(), T = g.taps();
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t full_vectors = CG / Lanes;
  thread_local std::vector<acc_t> Wt;
  Wt.resize(static_cast<size_t>(kPixels * ldw));
  std::vector<int64_t> row_x(static_cast<size_t>(KD * KH)), row_t(static_cast<size_t>(KD * KH));
  for (int64_t q0 = p0; q0 < p1; q0 += kPixels) {
    const int64_t q1 = std::min(p1, q0 + kPixels), P = q1 - q0;
    for (int64_t grp = 0; grp < G; ++grp) {
      generate<V>(P, R, T, z + q0 * R, St + grp * R * ldw, ldw, bias ? bias + grp * T : nullptr,
                  Wt.data());
      // Whether every weight of the block is finite (sum of w * 0 is 0), so that no pixel
      // needs the check of its taps outside the input below.
      V probe = V{};
      acc_t probe_rest = 0;
      for (int64_t p = 0; p < P; ++p) {
        const acc_t* row = Wt.data() + p * ldw;
        int64_t t = 0;
        for (; t + Lanes <= T; t += Lanes) probe += load<V>(row + t) * V{};
        for (; t < T; ++t) probe_rest += row[t] * acc_t(0);
      }
      for (int l = 0; l < Lanes; ++l) probe_rest += probe[l];
      const bool all_finite = probe_rest == acc_t(0);
      // Runs of pixels within one output row share their (kd, kh) taps.
      int64_t q = q0;
      while (q < q1) {
        const Pixel px = decode(g, q);
        const int64_t run = std::min(q1 - q, g.out[2] - px.ow);
        int64_t rows = 0;
        for (int64_t kd = 0; kd < KD; ++kd) {
          const int64_t id = px.od * g.stride[0] - g.padding[0] + kd * g.dilation[0];
          if (id < 0 || id >= g.in[0]) continue;
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int64_t ih = px.oh * g.stride[1] - g.padding[1] + kh * g.dilation[1];
            if (ih < 0 || ih >= g.in[1]) continue;
            row_x[rows] = (((px.b * g.in[0] + id) * g.in[1] + ih) * g.in[2]) * C + grp * CG;
            row_t[rows] = (kd * KH + kh) * KW;
            ++rows;
          }
        }
        const int64_t s = g.stride[2], pad = g.padding[2];
        // The pixels whose width taps all fall inside the input: [interior0, interior1).
        const int64_t interior0 = std::clamp<int64_t>(ceil_div(pad, s), px.ow, px.ow + run);
        const int64_t last_ok = floor_div(g.in[2] - 1 + pad - (KW - 1) * g.dilation[2], s);
        const int64_t interior1 = std::clamp<int64_t>(last_ok + 1, interior0, px.ow + run);
        // Output column ow of this row is pixel q + (ow - px.ow): y_row[ow * C], w_at(ow).
        scalar_t* y_row = y + (q - px.ow) * C + grp * CG;
        const int64_t w_first = q - q0 - px.ow;
        auto w_at = [&](int64_t ow) { return Wt.data() + (w_first + ow) * ldw; };
        auto pixels = [&](auto pb_const, auto nv_const, int64_t ow, int64_t c, int64_t lo,
                          int64_t hi) {
          constexpr int PB = decltype(pb_const)::value, NV = decltype(nv_const)::value;
          int64_t iw0[PB];
          const acc_t* w[PB];
          scalar_t* out[PB];
          for (int pb = 0; pb < PB; ++pb) {
            iw0[pb] = (ow + pb) * s - pad;
            w[pb] = w_at(ow + pb);
            out[pb] = y_row + (ow + pb) * C + c;
          }
          aggregate_block<PB, NV, V>(g, row_x.data(), row_t.data(), rows, lo, hi, x + c, iw0, w,
                                     out);
        };
        // One pixel with its own width taps, every channel: whole vectors, then the rest.
        auto edge_pixel = [&](int64_t ow) {
          int64_t lo, hi;
          width_taps(g, ow * s - pad, lo, hi);
          int64_t c = 0;
          for (; c + 2 * Lanes <= CG; c += 2 * Lanes)
            pixels(std::integral_constant<int, 1>(), std::integral_constant<int, 2>(), ow, c, lo,
                   hi);
          for (; c + Lanes <= CG; c += Lanes)
            pixels(std::integral_constant<int, 1>(), std::integral_constant<int, 1>(), ow, c, lo,
                   hi);
          for (; c < CG; ++c) {
            acc_t sum = 0;
            for (int64_t r = 0; r < rows; ++r) {
              const scalar_t* xr = x + row_x[r] + c;
              for (int64_t kw = lo; kw < hi; ++kw) {
                const int64_t iw = ow * s - pad + kw * g.dilation[2];
                sum += w_at(ow)[row_t[r] + kw] * static_cast<acc_t>(xr[iw * C]);
              }
            }
            y_row[ow * C + c] = static_cast<scalar_t>(sum);
          }
        };
        // Interior pixels in blocks of 8 / NV pixels of NV vectors of channels (8 accumulators).
        auto interior = [&](auto nv_const, int64_t c) {
          constexpr int NV = decltype(nv_const)::value;
          constexpr int PB = NV >= 4 ? 2 : 8 / NV;
          int64_t ow = interior0;
          for (; ow + PB <= interior1; ow += PB)
            pixels(std::integral_constant<int, PB>(), nv_const, ow, c, 0, KW);
          for (; ow < interior1; ++ow)
            pixels(std::integral_constant<int, 1>(), nv_const, ow, c, 0, KW);
        };
        for (int64_t ow = px.ow; ow < interior0; ++ow) edge_pixel(ow);
        for (int64_t ow = interior1; ow < px.ow + run; ++ow) edge_pixel(ow);
        if (interior1 > interior0) {
          int64_t c = 0, vectors = full_vectors;
          for (; vectors >= 4; vectors -= 4, c += 4 * Lanes)
            interior(std::integral_constant<int, 4>(), c);
          if (vectors >= 2) {
            interior(std::integral_constant<int, 2>(), c);
            vectors -= 2;
            c += 2 * Lanes;
          }
          if (vectors == 1) {
            interior(std::integral_constant<int, 1>(), c);
            c += Lanes;
          }
          for (; c < CG; ++c) {  // channels past the last whole vector
            for (int64_t ow = interior0; ow < interior1; ++ow) {
              acc_t sum = 0;
              for (int64_t r = 0; r < rows; ++r) {
                const scalar_t* xr = x + row_x[r] + c;
                for (int64_t kw = 0; kw < KW; ++kw) {
                  const int64_t iw = ow * s - pad + kw * g.dilation[2];
                  sum += w_at(ow)[row_t[r] + kw] * static_cast<acc_t>(xr[iw * C]);
                }
              }
              y_row[ow * C + c] = static_cast<scalar_t>(sum);
            }
          }
        }
        // Taps outside the input enter the sums as w * 0 (the zero-padded formulation's
        // semantics, as the other kernels): a non-finite weight there makes the pixel NaN.
        if (!all_finite && (rows < KD * KH || interior0 > px.ow || interior1 < px.ow + run)) {
          for (int64_t ow = px.ow; ow < px.ow + run; ++ow) {
            if (rows == KD * KH && ow >= interior0 && ow < interior1) continue;
            int64_t lo, hi;
            width_taps(g, ow * s - pad, lo, hi);
            if (padding_tap_not_finite(g, px, w_at(ow), lo, hi)) {
              for (int64_t c = 0; c < CG; ++c)
                y_row[ow * C + c] = std::numeric_limits<scalar_t>::quiet_NaN();
            }
          }
        }
        q += run;
      }
    }
  }
}

// gx for the input-row tasks [task0, task1) (channels_last_input_tasks: a task is a block of
// input rows of one sample and depth, every group). Per group, the kernel of the output rows
// those input rows receive from is generated into a buffer (output rows x OW x ldw), then each
// input pixel gathers sum over its taps of W[o, t] * gy[o, c] for the output pixels o whose
// window covers it (with a stride, the taps of one phase: input columns s apart share them).
template <typename scalar_t, typename acc_t, int Lanes>
void fused_backward_input_channels_last(const Geometry& g, int64_t R, const acc_t* St, int64_t ldw,
                                        const acc_t* bias, const scalar_t* gy, const scalar_t* z,
                                        scalar_t* gx, int64_t task0, int64_t task1) {
  using V = typename Simd<acc_t, Lanes>::type;
  using namespace channels_last;
  const int64_t C = g.channels, G = g.groups, CG = g.channels_per_group(), T = g.taps();
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t s = g.stride[2], pad = g.padding[2], d = g.dilation[2];
  const InputBlock block = channels_last_input_block(g, ldw);
  const int64_t blocks_h = ceil_div(g.in[1], block.rows);
  // kw taps of one phase: kw = first + j * step, j in [0, count) before the output range check.
  const int64_t step = s / gcd(s, d);
  thread_local std::vector<acc_t> Wb;
  Wb.resize(static_cast<size_t>(block.kernel_elements));
  std::vector<int64_t> row_w(static_cast<size_t>(KD * KH)), row_y(static_cast<size_t>(KD * KH));
  std::vector<int64_t> od_slot(static_cast<size_t>(OD), -1);
  for (int64_t task = task0; task < task1; ++task) {
    const int64_t ih0 = (task % blocks_h) * block.rows;
    const int64_t ih1 = std::min(g.in[1], ih0 + block.rows);
    const int64_t id = (task / blocks_h) % g.in[0], b = task / (blocks_h * g.in[0]);
    const Span oh =
        output_span(ih0, ih1, g.padding[1], g.kernel[1], g.dilation[1], g.stride[1], OH);
    const Span od = output_span(id, id + 1, g.padding[0], KD, g.dilation[0], g.stride[0], OD);
    const int64_t n_oh = std::max<int64_t>(0, oh.hi - oh.lo);
    for (int64_t grp = 0; grp < G; ++grp) {
      // The kernel of output rows (od, oh.lo..oh.hi), all columns, in slots of n_oh * OW rows.
      int64_t slots = 0;
      for (int64_t o = od.lo; o < od.hi; ++o) {
        const int64_t kd_num = id + g.padding[0] - o * g.stride[0];
        if (kd_num % g.dilation[0] != 0) continue;  // no tap of this output depth reaches id
        od_slot[o] = slots;
        const int64_t first = ((b * OD + o) * OH + oh.lo) * OW, M = n_oh * OW;
        acc_t* W = Wb.data() + slots * M * ldw;
        generate<V>(M, R, T, z + first * R, St + grp * R * ldw, ldw,
                    bias ? bias + grp * T : nullptr, W);
        ++slots;
      }
      for (int64_t ih = ih0; ih < ih1; ++ih) {
        // The (kd, kh) taps that reach (id, ih): their kernel rows in Wb and gy rows.
        int64_t rows = 0;
        for (int64_t kd = 0; kd < KD; ++kd) {
          const int64_t num_d = id + g.padding[0] - kd * g.dilation[0];
          if (num_d < 0 || num_d % g.stride[0] != 0 || num_d / g.stride[0] >= OD) continue;
          const int64_t o_d = num_d / g.stride[0];
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int64_t num_h = ih + g.padding[1] - kh * g.dilation[1];
            if (num_h < 0 || num_h % g.stride[1] != 0 || num_h / g.stride[1] >= OH) continue;
            const int64_t o_h = num_h / g.stride[1];
            row_w[rows] = (od_slot[o_d] * n_oh + (o_h - oh.lo)) * OW * ldw + (kd * KH + kh) * KW;
            row_y[rows] = ((b * OD + o_d) * OH + o_h) * OW * C + grp * CG;
            ++rows;
          }
        }
        scalar_t* gx_row = gx + ((b * g.in[0] + id) * g.in[1] + ih) * g.in[2] * C + grp * CG;
        // Input column iw of phase iw % s reads the taps kw = first + j * step (first fixed
        // per phase), j in [lo, hi), at output column ow0 - j * dow.
        auto taps = [&](int64_t iw, int64_t first, int64_t& lo, int64_t& hi, int64_t& ow0) {
          const int64_t count = (KW - first + step - 1) / step;
          const int64_t top = iw + pad - first * d;  // s * output column at j = 0
          const int64_t dj = step * d;               // decrease of that per j
          // need 0 <= top - j * dj <= (OW - 1) * s (top - j * dj is a multiple of s)
          hi = top < 0 ? 0 : std::min(count, top / dj + 1);
          lo = top <= (OW - 1) * s ? 0 : std::min(hi, ceil_div(top - (OW - 1) * s, dj));
          ow0 = floor_div(top, s);
        };
        const int64_t dow = step * d / s;
        // PB input columns iw, iw + s, ... with the same taps, NV vectors from channel c.
        auto pixels = [&](auto pb_const, auto nv_const, int64_t iw, int64_t c, int64_t first,
                          int64_t lo, int64_t hi, int64_t ow0) {
          constexpr int PB = decltype(pb_const)::value, NV = decltype(nv_const)::value;
          constexpr int L = Lanes;
          V acc[PB][NV];
          for (int pb = 0; pb < PB; ++pb)
            for (int v = 0; v < NV; ++v) acc[pb][v] = V{};
          for (int64_t r = 0; r < rows; ++r) {
            const acc_t* w = Wb.data() + row_w[r] + first;
            const scalar_t* y_r = gy + row_y[r] + c;
            for (int64_t j = lo; j < hi; ++j) {
              const int64_t kw = j * step, ow = ow0 - j * dow;  // pixel pb: column ow + pb
              for (int pb = 0; pb < PB; ++pb) {
                const V wv = span::splat<V>(w[(ow + pb) * ldw + kw]);
                const scalar_t* yp = y_r + (ow + pb) * C;
                for (int v = 0; v < NV; ++v) acc[pb][v] += wv * load_as<V>(yp + v * L);
              }
            }
          }
          for (int pb = 0; pb < PB; ++pb)
            for (int v = 0; v < NV; ++v)
              store(gx_row + (iw + pb * s) * C + c + v * L, acc[pb][v], L);
        };
        // One column, every channel: whole vectors, then the channels past them one by one.
        auto one_column = [&](int64_t iw, int64_t first) {
          int64_t lo, hi, ow0;
          taps(iw, first, lo, hi, ow0);
          int64_t c = 0;
          for (; c + 2 * Lanes <= CG; c += 2 * Lanes)
            pixels(std::integral_constant<int, 1>(), std::integral_constant<int, 2>(), iw, c, first,
                   lo, hi, ow0);
          for (; c + Lanes <= CG; c += Lanes)
            pixels(std::integral_constant<int, 1>(), std::integral_constant<int, 1>(), iw, c, first,
                   lo, hi, ow0);
          for (; c < CG; ++c) {
            acc_t sum = 0;
            for (int64_t r = 0; r < rows; ++r) {
              for (int64_t j = lo; j < hi; ++j) {
                const int64_t kw = first + j * step, ow = ow0 - j * dow;
                sum += Wb[row_w[r] + ow * ldw + kw] * static_cast<acc_t>(gy[row_y[r] + ow * C + c]);
              }
            }
            gx_row[iw * C + c] = static_cast<scalar_t>(sum);
          }
        };
        // Interior columns take every tap of their phase: PB of them at a time, the same PB
        // for every channel block (8 accumulators for the widest one).
        const int64_t full_vectors = CG / Lanes;
        const int64_t pb = full_vectors >= 4 ? 2 : full_vectors >= 2 ? 4 : 8;
        const bool blocks = CG % Lanes == 0 && full_vectors > 0;
        auto columns = [&](auto pb_const, int64_t iw, int64_t first, int64_t count, int64_t ow0) {
          int64_t c = 0, vectors = full_vectors;
          for (; vectors >= 4; vectors -= 4, c += 4 * Lanes)
            pixels(pb_const, std::integral_constant<int, 4>(), iw, c, first, 0, count, ow0);
          if (vectors >= 2) {
            pixels(pb_const, std::integral_constant<int, 2>(), iw, c, first, 0, count, ow0);
            vectors -= 2;
            c += 2 * Lanes;
          }
          if (vectors == 1)
            pixels(pb_const, std::integral_constant<int, 1>(), iw, c, first, 0, count, ow0);
        };
        for (int64_t phase = 0; phase < std::min(s, g.in[2]); ++phase) {
          int64_t first = -1;
          for (int64_t kw = 0; kw < std::min(step, KW); ++kw) {
            if ((phase + pad - kw * d) % s == 0) {
              first = kw;
              break;
            }
          }
          if (first < 0) {  // no tap reaches this phase's columns
            for (int64_t iw = phase; iw < g.in[2]; iw += s)
              for (int64_t c = 0; c < CG; ++c) gx_row[iw * C + c] = scalar_t(0);
            continue;
          }
          const int64_t count = (KW - first + step - 1) / step;
          // The interior: columns whose taps all land in the output row.
          const int64_t in_lo = (count - 1) * step * d + first * d - pad;
          const int64_t in_hi = (OW - 1) * s + first * d - pad;  // inclusive
          for (int64_t iw = phase; iw < g.in[2];) {
            if (blocks && iw >= in_lo && iw + (pb - 1) * s <= std::min(in_hi, g.in[2] - 1)) {
              const int64_t ow0 = (iw + pad - first * d) / s;
              if (pb == 2) {
                columns(std::integral_constant<int, 2>(), iw, first, count, ow0);
              } else if (pb == 4) {
                columns(std::integral_constant<int, 4>(), iw, first, count, ow0);
              } else {
                columns(std::integral_constant<int, 8>(), iw, first, count, ow0);
              }
              iw += pb * s;
            } else {
              one_column(iw, first);
              iw += s;
            }
          }
        }
      }
    }
  }
}

// For output pixels [p0, p1): the kernel's gradient dW[p, t] = sum_c gy[p, c] x[p + off(t), c]
// of each group, and from it gz[p, :] = sum over groups and taps of dW[p, t] S[t, :] (written),
// gS[t, :] += sum_p dW[p, t] z[p, :] and gb[t] += sum_p dW[p, t] (added, per group, to the
// caller's partial sums; any of gz, gS, gb null: not wanted). Sp: the span weight, (G*T, ldr)
// with ldr >= round_up(R, kSpanPad) and the columns past R zero.
template <typename scalar_t, typename acc_t, int Lanes>
void fused_backward_span_channels_last(const Geometry& g, int64_t R, const acc_t* Sp, int64_t ldr,
                                       const scalar_t* gy, const scalar_t* x, const scalar_t* z,
                                       scalar_t* gz, acc_t* gS, acc_t* gb, int64_t p0, int64_t p1) {
  using V = typename Simd<acc_t, Lanes>::type;
  using namespace channels_last;
  constexpr int64_t kPixels = kChannelsLastPixels;
  const int64_t C = g.channels, G = g.groups, CG = g.channels_per_group(), T = g.taps();
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t ldw = round_up(T, kSpanPad);
  const int64_t full = CG / Lanes * Lanes;
  thread_local std::vector<acc_t> dW, zp, gz_acc;
  dW.resize(static_cast<size_t>(kPixels * ldw));
  zp.resize(gS != nullptr ? static_cast<size_t>(kPixels * ldr) : 0);
  gz_acc.resize(gz != nullptr ? static_cast<size_t>(kPixels * ldr) : 0);
  std::vector<int64_t> row_x(static_cast<size_t>(KD * KH)), tap_x(static_cast<size_t>(T));
  bool rows_inside = false;
  for (int64_t q0 = p0; q0 < p1; q0 += kPixels) {
    const int64_t q1 = std::min(p1, q0 + kPixels), P = q1 - q0;
    if (gS != nullptr) {  // z's rows of these pixels, zero-padded to ldr, in acc_t
      for (int64_t p = 0; p < P; ++p) {
        acc_t* row = zp.data() + p * ldr;
        const scalar_t* src = z + (q0 + p) * R;
        for (int64_t k = 0; k < R; ++k) row[k] = static_cast<acc_t>(src[k]);
        std::fill(row + R, row + ldr, acc_t(0));
      }
    }
    for (int64_t grp = 0; grp < G; ++grp) {
      Pixel px = decode(g, q0);
      for (int64_t p = 0; p < P; ++p) {
        acc_t* dw = dW.data() + p * ldw;
        const scalar_t* gyp = gy + (q0 + p) * C + grp * CG;
        if (p == 0 || px.ow == 0) {
          // A new output row: every (kd, kh) row of taps, its input row or -1 outside.
          for (int64_t kd = 0; kd < KD; ++kd) {
            const int64_t id = px.od * g.stride[0] - g.padding[0] + kd * g.dilation[0];
            for (int64_t kh = 0; kh < KH; ++kh) {
              const int64_t ih = px.oh * g.stride[1] - g.padding[1] + kh * g.dilation[1];
              const bool inside = id >= 0 && id < g.in[0] && ih >= 0 && ih < g.in[1];
              row_x[kd * KH + kh] =
                  inside ? (((px.b * g.in[0] + id) * g.in[1] + ih) * g.in[2]) * C + grp * CG : -1;
            }
          }
          // Every row inside: each tap's offset from its pixel's first input column.
          rows_inside = std::all_of(row_x.begin(), row_x.end(), [](int64_t o) { return o >= 0; });
          if (rows_inside) {
            for (int64_t r = 0; r < KD * KH; ++r)
              for (int64_t kw = 0; kw < KW; ++kw)
                tap_x[r * KW + kw] = row_x[r] + kw * g.dilation[2] * C;
          }
        }
        const int64_t iw0 = px.ow * g.stride[2] - g.padding[2];
        int64_t lo = 0, hi = KW;
        if (iw0 < 0 || iw0 + (KW - 1) * g.dilation[2] >= g.in[2]) width_taps(g, iw0, lo, hi);
        const bool all_taps = rows_inside && lo == 0 && hi == KW;
        if (++px.ow == g.out[2]) {  // the next pixel
          px.ow = 0;
          if (++px.oh == g.out[1]) {
            px.oh = 0;
            if (++px.od == g.out[0]) {
              px.od = 0;
              ++px.b;
            }
          }
        }
        // Taps in order, Lanes at a time: each tap's products summed over the whole vectors
        // of channels into a vector, the Lanes vectors reduced to one vector of their sums
        // (lane_sums) and stored at once; taps outside the input give 0.
        auto whole_vectors = [&](auto nv_const) {
          constexpr int NV = decltype(nv_const)::value;  // 0: any number, in a loop
          V gv[NV > 0 ? NV : 1];
          for (int v = 0; v < NV; ++v) gv[v] = load_as<V>(gyp + v * Lanes);
          auto dot = [&](const scalar_t* xp) {
            V acc = V{};
            if constexpr (NV > 0) {
              for (int v = 0; v < NV; ++v) acc += gv[v] * load_as<V>(xp + v * Lanes);
            } else {
              for (int64_t c = 0; c < full; c += Lanes)
                acc += load_as<V>(gyp + c) * load_as<V>(xp + c);
            }
            return acc;
          };
          int64_t tb = 0;
          if (all_taps) {  // every tap inside: offsets from tap_x, no checks
            const scalar_t* xb = x + iw0 * C;
            for (; tb + Lanes <= T; tb += Lanes) {
              V batch[Lanes];
              for (int i = 0; i < Lanes; ++i) batch[i] = dot(xb + tap_x[tb + i]);
              const V sums = lane_sums<Lanes>(batch);
              std::memcpy(dw + tb, &sums, sizeof(V));
            }
            if (tb < T) {
              V batch[Lanes];
              for (int i = 0; i < Lanes; ++i) batch[i] = tb + i < T ? dot(xb + tap_x[tb + i]) : V{};
              const V sums = lane_sums<Lanes>(batch);
              std::memcpy(dw + tb, &sums, sizeof(V));
            }
            return;
          }
          int64_t r = 0, kw = 0;
          for (; tb < T; tb += Lanes) {
            V batch[Lanes];
            for (int i = 0; i < Lanes; ++i) {
              V acc = V{};
              if (tb + i < T) {
                if (row_x[r] >= 0 && kw >= lo && kw < hi)
                  acc = dot(x + row_x[r] + (iw0 + kw * g.dilation[2]) * C);
                if (++kw == KW) {
                  kw = 0;
                  ++r;
                }
              }
              batch[i] = acc;
            }
            const V sums = lane_sums<Lanes>(batch);
            std::memcpy(dw + tb, &sums, sizeof(V));  // dw has round_up(T, kSpanPad) columns
          }
        };
        switch (full / Lanes) {
          case 1:
            whole_vectors(std::integral_constant<int, 1>());
            break;
          case 2:
            whole_vectors(std::integral_constant<int, 2>());
            break;
          case 4:
            whole_vectors(std::integral_constant<int, 4>());
            break;
          default:
            whole_vectors(std::integral_constant<int, 0>());
        }
        if (full < CG) {  // the channels past the last whole vector
          for (int64_t r = 0; r < KD * KH; ++r) {
            if (row_x[r] < 0) continue;
            for (int64_t kw = lo; kw < hi; ++kw) {
              const scalar_t* xp = x + row_x[r] + (iw0 + kw * g.dilation[2]) * C;
              acc_t sum = dw[r * KW + kw];
              for (int64_t c = full; c < CG; ++c)
                sum += static_cast<acc_t>(gyp[c]) * static_cast<acc_t>(xp[c]);
              dw[r * KW + kw] = sum;
            }
          }
        }
        // Taps outside the input: sum_c gy * 0, NaN where the pixel's gy is not finite.
        if (!all_taps) {
          bool finite = true;
          for (int64_t c = 0; c < CG; ++c) finite &= std::isfinite(static_cast<acc_t>(gyp[c]));
          if (!finite) {
            for (int64_t r = 0; r < KD * KH; ++r)
              for (int64_t kw = 0; kw < KW; ++kw)
                if (row_x[r] < 0 || kw < lo || kw >= hi)
                  dw[r * KW + kw] = std::numeric_limits<acc_t>::quiet_NaN();
          }
        }
      }
      const acc_t* none = nullptr;
      if (gz != nullptr) {
        // gz[p, k] (+)= sum_t dW[p, t] S[t, k]: rows m = p (stride ldw), contraction q = t.
        const acc_t* S_g = Sp + grp * T * ldr;
        if (grp == 0) {
          span::product<false, V>(P, T, dW.data(), ldw, 1, none, S_g, ldr, 0, R, gz_acc.data(), ldr,
                                  0, true);
        } else {
          span::product<true, V>(P, T, dW.data(), ldw, 1, none, S_g, ldr, 0, R, gz_acc.data(), ldr,
                                 0, true);
        }
      }
      if (gS != nullptr) {
        // gS[t, k] += sum_p dW[p, t] z[p, k]: rows m = t (stride 1), contraction q = p.
        span::product<true, V>(T, P, dW.data(), 1, ldw, none, zp.data(), ldr, 0, R,
                               gS + grp * T * R, R, 0, true);
      }
      if (gb != nullptr) {
        acc_t* gb_g = gb + grp * T;
        for (int64_t p = 0; p < P; ++p)
          for (int64_t t = 0; t < T; ++t) gb_g[t] += dW[p * ldw + t];
      }
    }
    if (gz != nullptr) {
      for (int64_t p = 0; p < P; ++p) {
        const acc_t* src = gz_acc.data() + p * ldr;
        scalar_t* dst = gz + (q0 + p) * R;
        for (int64_t k = 0; k < R; ++k) dst[k] = static_cast<scalar_t>(src[k]);
      }
    }
  }
}

}  // namespace INVOLUTION_CPU_ISA
}  // namespace cpu
}  // namespace involution
