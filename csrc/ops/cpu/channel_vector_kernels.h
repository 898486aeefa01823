// The forward and input-gradient row kernels with the group's channels in the SIMD lanes, for
// RedNet's width geometries: a kernel width of 3 or 7 at width stride 1 or 2 and width
// dilation 1, and C/G a multiple of the vector width (any height/depth geometry, any dtype).
// row_kernels.h's forward() hands such geometries to this one, and its backward_input() those
// of kernel width 7 at width stride 1 (and 2 on narrow rows: channel_vector_handles_input);
// every other geometry keeps its own loops.
//
// Why: forward() keeps pixels in the lanes, so every multiply-add needs a vector of the input
// of its own (shifted by the tap, so mostly unaligned), loaded from L1: 9 loads per 8
// multiply-adds, and a core here sustains little more than one 32-byte load per cycle against
// two multiply-adds. Here the input is staged with a pixel's channels contiguous,
// [tap row][slot][C/G], and J output pixels are computed together: along a tap row, input slot
// u serves pixel a at tap kw = u - a*s, so each input vector loaded feeds up to J pixels'
// accumulators and each weight is one broadcast. For J = 6 pixels and 16 channels at K = 7,
// stride 1: 24 vector loads and 42 broadcasts per 84 multiply-adds (aligned). An isolated copy
// of each inner loop with its data in L1 ran at 32-41 G multiply-adds/s on one core here,
// forward()'s at 11-19.
//
// Layouts as in row_kernels.h: x (B, C, D, H, W), w (B, G, KD, KH, KW, OD, OH, OW), y (B, C, OD,
// OH, OW); the same tasks (blocks of kRowsPerTask output rows of one (batch, group) slab).
// Staged rows cover the input rows a task reads, out-of-range rows and columns as zeros, so
// taps outside the input enter each sum as w * 0, as in every other kernel; each output
// element is one sum over the taps in (kd, kh, kw) order: the results equal forward()'s.
// Results go through a small tile of [pixel][C/G], transposed back to the output's rows.
//
// The fused op's forward (fused_forward_tiles) runs the same aggregation, but generates the
// weights of each tile of 64 output pixels itself, by the span product straight into the
// [tap][pixel] buffer the aggregation reads (L1), instead of reading a generated slab.
//
// The input gradient (backward_input, at kernel width 7) is the same loop in gather form: input
// pixel a at tap kw receives from output column a + p - kw (width stride 1; at stride 2 the
// grad_output row is staged spread 2 apart, zeros between), so with the grad_output rows
// staged the same way each loaded vector again feeds up to J pixels.
//
// Like row_kernels.h, this file is compiled once per instruction set, inside that instruction
// set's target region (row_kernels.h includes it).

#pragma once

#ifndef INVOLUTION_CPU_ISA
#error "include kernel_table.h, set the target, define INVOLUTION_CPU_ISA, then include this"
#endif

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "kernel_table.h"
#include "simd.h"
#include "span_kernels.h"

namespace involution {
namespace cpu {
namespace INVOLUTION_CPU_ISA {

namespace channel_vector {

// Output pixels per tile: the tile of results, [pixel][C/G], and the row's weights, [tap][pixel],
// both in the accumulation type, stay in L1.
constexpr int64_t kTilePixels = 64;

// Swaps the off-diagonal H x H blocks of each 2H x 2H block of the Lanes x Lanes matrix whose
// rows are a (row i) and b (row i + H); applied for H = Lanes/2, ..., 1 to the row pairs it
// transposes the matrix.
template <int H, typename V, size_t... I>
inline void swap_blocks(V& a, V& b, std::index_sequence<I...>) {
  constexpr int L = sizeof...(I);
  const V lo = __builtin_shufflevector(a, b, ((I & H) == 0 ? I : L + I - H)...);
  const V hi = __builtin_shufflevector(a, b, ((I & H) == 0 ? I + H : L + I)...);
  a = lo;
  b = hi;
}

template <int Lanes, int H, typename V>
inline void transpose_levels(V* r) {
  if constexpr (H >= 1) {
    for (int i = 0; i < Lanes; ++i) {
      if ((i & H) == 0) swap_blocks<H>(r[i], r[i + H], std::make_index_sequence<Lanes>());
    }
    transpose_levels<Lanes, H / 2>(r);
  }
}

// Transposes the Lanes x Lanes matrix held in r[0..Lanes) (rows) in registers.
template <int Lanes, typename V>
inline void transpose(V* r) {
  transpose_levels<Lanes, Lanes / 2>(r);
}

// Slots of a tile's staged weights in the input gradient: its 64 input pixels and the
// KW - 1 <= 6 further output columns they receive from, rounded up.
constexpr int64_t kGatherSlots = kTilePixels + 8;

// acc[a][v] for J pixels a and NV vectors of channels, summed over `rows` tap rows, stored to
// tile rows a (tile_ld apart). rows[r] + offset: tap row r's staged row at the block's first
// slot; its KW taps' weights at w + r*KW*WS (rows WS apart). Every stride in the loop is a
// compile-time constant, so the loads take constant displacements and the 12 accumulators stay
// in registers.
//   * forward (Gather false): output pixel a at tap kw reads slot u = a*S + kw; its weight is
//     per pixel, w[kw * kTilePixels + a];
//   * input gradient (Gather true, S = 1): input pixel a at tap kw receives from slot
//     u = a + KW - 1 - kw (the output column iw + p - kw); the weight belongs to that output
//     column, w[kw * kGatherSlots + u].
template <int J, int S, int KW, int NV, bool Gather, typename V, typename acc_t>
inline void pixel_block(const acc_t* const* rows, int64_t n_rows, int64_t offset, const acc_t* w,
                        acc_t* tile, int64_t tile_ld) {
  constexpr int Lanes = sizeof(V) / sizeof(acc_t);
  constexpr int Slots = (J - 1) * S + KW, Width = NV * Lanes;
  constexpr int64_t WS = Gather ? kGatherSlots : kTilePixels;
  V acc[J][NV];
  for (int a = 0; a < J; ++a)
    for (int v = 0; v < NV; ++v) acc[a][v] = V{};
  for (int64_t r = 0; r < n_rows; ++r) {
    const acc_t* xr = rows[r] + offset;
    // Opaque to the optimiser: otherwise GCC folds `offset` into each slot's displacement and
    // keeps those Slots * NV sums in registers and on the stack instead of using immediates.
    __asm__("" : "+r"(xr));
    const acc_t* wr = w + r * KW * WS;
#pragma GCC unroll 32
    for (int u = 0; u < Slots; ++u) {
      V xv[NV];
      for (int v = 0; v < NV; ++v) xv[v] = load<V>(xr + u * Width + v * Lanes);
#pragma GCC unroll 16
      for (int a = 0; a < J; ++a) {
        const int kw = Gather ? KW - 1 - (u - a) : u - a * S;
        if (kw < 0 || kw >= KW) continue;
        const V s = span::splat<V>(wr[kw * WS + (Gather ? u : a)]);
        for (int v = 0; v < NV; ++v) acc[a][v] += s * xv[v];
      }
    }
  }
  for (int a = 0; a < J; ++a)
    for (int v = 0; v < NV; ++v) std::memcpy(tile + a * tile_ld + v * Lanes, &acc[a][v], sizeof(V));
}

// One staged row of a chunk of cw channels (a multiple of Lanes): dst[q * cw + c] for slots
// q in [0, slots) holds channel c's element at column q - q0 of a source row (channel c's row at
// src + c * plane, n_src columns), or zero where that column is outside [0, n_src).
template <typename acc_t, int Lanes, typename scalar_t>
void stage_row(const scalar_t* src, int64_t plane, int64_t n_src, int64_t q0, int64_t slots,
               int64_t cw, acc_t* dst) {
  using V = typename Simd<acc_t, Lanes>::type;
  // Slots [q_lo, q_hi) hold source columns [q_lo - q0, q_hi - q0).
  const int64_t q_lo = std::clamp<int64_t>(q0, 0, slots);
  const int64_t q_hi = std::clamp<int64_t>(q0 + n_src, q_lo, slots), n = q_hi - q_lo;
  std::fill(dst, dst + q_lo * cw, acc_t(0));
  std::fill(dst + q_hi * cw, dst + slots * cw, acc_t(0));
  src += q_lo - q0;
  for (int64_t cb = 0; cb < cw; cb += Lanes) {
    const scalar_t* s = src + cb * plane;
    acc_t* d = dst + q_lo * cw + cb;
    if (n < Lanes) {
      for (int64_t c = 0; c < Lanes; ++c)
        for (int64_t j = 0; j < n; ++j) d[j * cw + c] = static_cast<acc_t>(s[c * plane + j]);
      continue;
    }
    // Blocks of Lanes columns, the last one ending at n (overlapping its predecessor).
    for (int64_t j = 0;; j += Lanes) {
      const int64_t j0 = std::min(j, n - Lanes);
      V block[Lanes];
      for (int c = 0; c < Lanes; ++c) block[c] = load_as<V>(s + c * plane + j0);
      transpose<Lanes>(block);
      for (int l = 0; l < Lanes; ++l) std::memcpy(d + (j0 + l) * cw, &block[l], sizeof(V));
      if (j0 + Lanes >= n) break;
    }
  }
}

// dst[s] for s in [0, count): the source row's element at column s - q0 (src, n_src columns),
// converted, or zero outside [0, n_src).
template <typename acc_t, int Lanes, typename scalar_t>
void stage_weights(const scalar_t* src, int64_t n_src, int64_t q0, int64_t count, acc_t* dst) {
  const int64_t lo = std::clamp<int64_t>(q0, 0, count);
  const int64_t hi = std::clamp<int64_t>(q0 + n_src, lo, count);
  std::fill(dst, dst + lo, acc_t(0));
  copy_row<acc_t, Lanes>(src + (lo - q0), hi - lo, dst + lo);
  std::fill(dst + hi, dst + count, acc_t(0));
}

// Staged rows in chunks of 2*Lanes channels (the last one of Lanes when C/G is an odd number
// of vectors): [chunk][kd][row][slot][chunk's channels]. The forward stages input rows in it,
// the input gradient grad_output rows.
template <typename acc_t, int Lanes>
struct ChunkedRows {
  static constexpr int64_t kChunk = 2 * Lanes;
  int64_t CG = 0, max_rows = 0, slots = 0, chunk_stride = 0;
  std::vector<acc_t> data;

  void allocate(int64_t channels, int64_t depths, int64_t rows, int64_t slot_count) {
    CG = channels;
    max_rows = rows;
    slots = slot_count;
    chunk_stride = depths * max_rows * slots * kChunk;
    data.assign(ceil_div(CG, kChunk) * chunk_stride, acc_t(0));
  }
  int64_t chunk_width(int64_t cc) const { return std::min(kChunk, CG - cc); }
  // Row r of depth tap kd, for the chunk starting at channel cc.
  acc_t* row(int64_t kd, int64_t r, int64_t cc) {
    return data.data() + (cc / kChunk) * chunk_stride +
           (kd * max_rows + r) * slots * chunk_width(cc);
  }
  const acc_t* row(int64_t kd, int64_t r, int64_t cc) const {
    return const_cast<ChunkedRows*>(this)->row(kd, r, cc);
  }
};

// The staged input of one forward task: slot q of a row holds input column q - p.
template <typename acc_t, int Lanes>
struct ChannelSlab : ChunkedRows<acc_t, Lanes> {
  using ChunkedRows<acc_t, Lanes>::kChunk;
  int64_t first_row = 0;  // input row of staged row 0 (may be negative: zero rows)

  // Stages the rows output rows [oh0, oh1) of output depth od read, channels [c0, c0 + CG).
  template <typename scalar_t>
  void stage(const Geometry& g, const scalar_t* x, int64_t c0, int64_t od, int64_t oh0,
             int64_t oh1) {
    const int64_t CG = g.channels_per_group(), KD = g.kernel[0];
    const int64_t H = g.in[1], W = g.in[2], p = g.padding[2], plane = g.in_volume();
    if (this->data.empty()) {
      // Every slot an output column reads, and the input rows kRowsPerTask output rows read.
      this->allocate(CG, KD,
                     (kRowsPerTask - 1) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1] + 1,
                     (g.out[2] - 1) * g.stride[2] + g.kernel[2]);
    }
    const int64_t slots = this->slots;
    first_row = oh0 * g.stride[1] - g.padding[1];
    const int64_t rows = (oh1 - 1 - oh0) * g.stride[1] + (g.kernel[1] - 1) * g.dilation[1] + 1;
    for (int64_t cc = 0; cc < CG; cc += kChunk) {
      const int64_t cw = this->chunk_width(cc);
      for (int64_t kd = 0; kd < KD; ++kd) {
        const int64_t id = od * g.stride[0] - g.padding[0] + kd * g.dilation[0];
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t ih = first_row + r;
          acc_t* dst = this->row(kd, r, cc);
          if (id < 0 || id >= g.in[0] || ih < 0 || ih >= H) {
            std::fill(dst, dst + slots * cw, acc_t(0));
            continue;
          }
          stage_row<acc_t, Lanes>(x + (c0 + cc) * plane + (id * H + ih) * W, plane, W, p, slots, cw,
                                  dst);
        }
      }
    }
  }
};

// Runs pixel_block over pixels [0, n) of one staged row run, every chunk of channels: pixel j
// reads from slot first_slot + j*S (rows[r]: tap row r's staged row for the chunk, set by
// set_rows(cc)), its weights at w + j, results to tile row j.
template <int S, int KW, bool Gather, typename acc_t, int Lanes, typename SetRows>
void pixel_blocks(int64_t CG, const SetRows& set_rows, const acc_t* const* rows, int64_t n_rows,
                  int64_t first_slot, int64_t n, const acc_t* w, acc_t* tile) {
  using V = typename Simd<acc_t, Lanes>::type;
  auto chunk = [&](auto nv_const, int64_t cc) {
    constexpr int NV = decltype(nv_const)::value;
    // J pixels share each loaded vector: 12 accumulators (16 vector registers).
    constexpr int J = NV == 1 ? 12 : 6;
    constexpr int Width = NV * Lanes;
    set_rows(cc);
    auto blocks = [&](auto j_const, int64_t& j) {
      constexpr int Jb = decltype(j_const)::value;
      for (; j + Jb <= n; j += Jb) {
        pixel_block<Jb, S, KW, NV, Gather, V>(rows, n_rows, (first_slot + j * S) * Width, w + j,
                                              tile + j * CG + cc, CG);
      }
    };
    // Blocks of J pixels, then the rest of the run in blocks of 6 (one vector of channels) and
    // 3 pixels, which still share each loaded vector, and single pixels: RedNet's stage 4 rows
    // are 7 pixels wide.
    int64_t j = 0;
    blocks(std::integral_constant<int, J>(), j);
    if constexpr (J > 6) blocks(std::integral_constant<int, 6>(), j);
    blocks(std::integral_constant<int, 3>(), j);
    blocks(std::integral_constant<int, 1>(), j);
  };
  int64_t cc = 0;
  for (; cc + 2 * Lanes <= CG; cc += 2 * Lanes) chunk(std::integral_constant<int, 2>(), cc);
  if (cc < CG) chunk(std::integral_constant<int, 1>(), cc);
}

// Output pixels [ow, ow + run) of output row oh of the task staged in `slab`, every channel:
// weights at w (tap t at w + t * kTilePixels, pixel ow at w[0]), results to the tile (pixel ow
// at tile[0], rows C/G apart). rows: scratch for KD*KH row pointers.
template <int S, int KW, typename acc_t, int Lanes>
void aggregate_row(const Geometry& g, const ChannelSlab<acc_t, Lanes>& slab, int64_t oh, int64_t ow,
                   int64_t run, const acc_t* w, acc_t* tile, const acc_t** rows) {
  const int64_t KD = g.kernel[0], KH = g.kernel[1];
  auto set_rows = [&](int64_t cc) {
    for (int64_t kd = 0; kd < KD; ++kd) {
      for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t r = oh * g.stride[1] - g.padding[1] + kh * g.dilation[1] - slab.first_row;
        rows[kd * KH + kh] = slab.row(kd, r, cc);
      }
    }
  };
  pixel_blocks<S, KW, false, acc_t, Lanes>(g.channels_per_group(), set_rows, rows, KD * KH, ow * S,
                                           run, w, tile);
}

// The tile's pixels [0, n), [pixel][C/G], transposed to the output: channel c's pixel i at
// y + c * plane + i. The tile has whole blocks of Lanes pixels.
template <typename scalar_t, typename acc_t, int Lanes>
void store_tile(const acc_t* tile, int64_t n, int64_t CG, scalar_t* y, int64_t plane) {
  using V = typename Simd<acc_t, Lanes>::type;
  for (int64_t i = 0; i < n; i += Lanes) {
    const int64_t count = std::min<int64_t>(Lanes, n - i);
    for (int64_t cb = 0; cb < CG; cb += Lanes) {
      V block[Lanes];
      for (int l = 0; l < Lanes; ++l) block[l] = load<V>(tile + (i + l) * CG + cb);
      transpose<Lanes>(block);
      scalar_t* out = y + cb * plane + i;
      if (count == Lanes) {
        for (int c = 0; c < Lanes; ++c) store(out + c * plane, block[c], Lanes);
      } else {
        for (int c = 0; c < Lanes; ++c) store(out + c * plane, block[c], count);
      }
    }
  }
}

// Per-call buffers of the forward kernels.
template <typename acc_t, int Lanes>
struct Buffers {
  ChannelSlab<acc_t, Lanes> slab;
  std::vector<acc_t> tile;     // [round_up(kTilePixels, Lanes)][C/G]
  std::vector<acc_t> weights;  // [taps][kTilePixels]
  std::vector<const acc_t*> rows;
  explicit Buffers(const Geometry& g)
      : tile(round_up(kTilePixels, Lanes) * g.channels_per_group(), acc_t(0)),
        weights(g.taps() * kTilePixels, acc_t(0)),
        rows(g.kernel[0] * g.kernel[1]) {}
};

template <int S, int KW, typename scalar_t, typename acc_t, int Lanes>
void forward_shape(const Geometry& g, const scalar_t* x, const scalar_t* w, scalar_t* y,
                   int64_t begin, int64_t end) {
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t CG = g.channels_per_group(), taps = g.taps(), out_volume = g.out_volume();
  Buffers<acc_t, Lanes> buf(g);
  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = output_row_block(g, task);
    buf.slab.stage(g, x, rb.c0, rb.depth, rb.row0, rb.row1);
    const scalar_t* w_slab = w + rb.bg * taps * out_volume;
    for (int64_t oh = rb.row0; oh < rb.row1; ++oh) {
      const int64_t pixel0 = (rb.depth * OH + oh) * OW;  // of this row, in a plane
      for (int64_t j0 = 0; j0 < OW; j0 += kTilePixels) {
        const int64_t n = std::min(OW - j0, kTilePixels);
        // The weights of these pixels, converted once, at compile-time strides.
        for (int64_t t = 0; t < taps; ++t) {
          copy_row<acc_t, Lanes>(w_slab + t * out_volume + pixel0 + j0, n,
                                 buf.weights.data() + t * kTilePixels);
        }
        aggregate_row<S, KW>(g, buf.slab, oh, j0, n, buf.weights.data(), buf.tile.data(),
                             buf.rows.data());
        store_tile<scalar_t, acc_t, Lanes>(buf.tile.data(), n, CG,
                                           y + rb.c0 * out_volume + pixel0 + j0, out_volume);
      }
    }
  }
}

// The fused forward (fused_involution_kernel.cpp) on contiguous tensors: per task and tile of
// kTilePixels output pixels, the tile's kernel is generated into the weights buffer (L1) by the
// span product and aggregated from there; no slab of generated weights is written. The tiles
// run over the task's pixels in order (several output rows at a time for narrow maps).
template <int S, int KW, typename scalar_t, typename acc_t, int Lanes>
void fused_forward_shape(const Geometry& g, int64_t R, const acc_t* span_weight,
                         const acc_t* span_bias, const scalar_t* x, const scalar_t* z, scalar_t* y,
                         int64_t begin, int64_t end) {
  using V = typename Simd<acc_t, Lanes>::type;
  const int64_t OH = g.out[1], OW = g.out[2];
  const int64_t CG = g.channels_per_group(), taps = g.taps(), P = g.out_volume();
  Buffers<acc_t, Lanes> buf(g);
  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = output_row_block(g, task);
    const int64_t b = rb.bg / g.groups, group = rb.bg % g.groups;
    const acc_t* S_g = span_weight + group * taps * R;
    const acc_t* bias_g = span_bias != nullptr ? span_bias + group * taps : nullptr;
    const scalar_t* z_b = z + b * R * P;
    buf.slab.stage(g, x, rb.c0, rb.depth, rb.row0, rb.row1);
    const int64_t p_end = (rb.depth * OH + rb.row1) * OW;
    for (int64_t p0 = (rb.depth * OH + rb.row0) * OW; p0 < p_end; p0 += kTilePixels) {
      const int64_t p1 = std::min(p_end, p0 + kTilePixels);
      span::product<false, V>(taps, R, S_g, R, 1, bias_g, z_b, P, p0, p1, buf.weights.data(),
                              kTilePixels, p0, false);
      for (int64_t p = p0; p < p1;) {  // runs of pixels in one output row
        const int64_t oh = (p / OW) % OH, ow = p % OW, run = std::min(p1 - p, OW - ow);
        aggregate_row<S, KW>(g, buf.slab, oh, ow, run, buf.weights.data() + (p - p0),
                             buf.tile.data() + (p - p0) * CG, buf.rows.data());
        p += run;
      }
      store_tile<scalar_t, acc_t, Lanes>(buf.tile.data(), p1 - p0, CG, y + rb.c0 * P + p0, P);
    }
  }
}

// The input gradient (gather form, as row_kernels.h's backward_input) for width stride SW of
// 1 or 2: grad_x[c, i] = sum over the taps (kd, kh, kw) whose output pixel
// o = (od, oh, (i + p - kw) / SW) exists (i + p - kw a multiple of SW) of w[tap, o] *
// grad_y[c, o]. Per task (kRowsPerTask input rows of one slab and depth) the grad_output rows
// they receive from are staged [chunk][kd][row][slot][chunk's channels], slot q holding
// "column" q - (KW - 1 - p) of the row spread SW apart (output column o at SW * o, zeros
// between and past the row); per input row and tile of 64 pixels, the weights of its valid tap
// rows are staged [tap][slot] the same way, and J input pixels run together, each staged
// grad_output vector feeding up to J accumulators. At SW = 2 half the multiply-adds are by the
// zeros between the columns: the loop is the stride-1 one, whose loads are shared by J pixels.
template <typename acc_t, int Lanes, typename scalar_t>
void stage_spread_row(const scalar_t* src, int64_t plane, int64_t n_src, int64_t SW, int64_t q0,
                      int64_t slots, int64_t cw, acc_t* packed, acc_t* dst) {
  if (SW == 1) {
    stage_row<acc_t, Lanes>(src, plane, n_src, q0, slots, cw, dst);
    return;
  }
  // The row packed, [column][channel], then each column to slot q0 + SW * column.
  stage_row<acc_t, Lanes>(src, plane, n_src, 0, n_src, cw, packed);
  std::fill(dst, dst + slots * cw, acc_t(0));
  for (int64_t o = 0; o < n_src; ++o) {
    const int64_t q = q0 + SW * o;
    if (q >= 0 && q < slots) std::memcpy(dst + q * cw, packed + o * cw, cw * sizeof(acc_t));
  }
}

// dst[s] for s in [0, count): the source row's element at column (s - q0) / SW where s - q0 is a
// multiple of SW (src, n_src columns), converted; zero elsewhere.
template <typename acc_t, int Lanes, typename scalar_t>
void stage_spread_weights(const scalar_t* src, int64_t n_src, int64_t SW, int64_t q0, int64_t count,
                          acc_t* dst) {
  if (SW == 1) {
    stage_weights<acc_t, Lanes>(src, n_src, q0, count, dst);
    return;
  }
  std::fill(dst, dst + count, acc_t(0));
  // Columns o with 0 <= q0 + SW * o < count.
  const int64_t o0 = std::max<int64_t>(0, ceil_div(-q0, SW));
  const int64_t o1 = std::min(n_src, floor_div(count - 1 - q0, SW) + 1);
  for (int64_t o = o0; o < o1; ++o) dst[q0 + SW * o] = static_cast<acc_t>(src[o]);
}

template <int KW, typename scalar_t, typename acc_t, int Lanes>
void backward_input_shape(const Geometry& g, const scalar_t* grad_y, const scalar_t* w,
                          scalar_t* grad_x, int64_t begin, int64_t end) {
  constexpr int64_t kChunk = ChunkedRows<acc_t, Lanes>::kChunk;
  const int64_t H = g.in[1], W = g.in[2];
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1];
  const int64_t sd = g.stride[0], sh = g.stride[1], sw = g.stride[2];
  const int64_t CG = g.channels_per_group(), taps = g.taps();
  const int64_t in_volume = g.in_volume(), out_volume = g.out_volume();
  const int64_t e = KW - 1 - g.padding[2];  // slot of output column 0
  const int64_t slots = W + KW - 1;
  const int64_t max_out_rows = (kRowsPerTask - 1 + (KH - 1) * g.dilation[1]) / sh + 1;
  ChunkedRows<acc_t, Lanes> staged;  // slot q: output column (q - e) / sw
  staged.allocate(CG, KD, max_out_rows, slots);
  std::vector<acc_t> packed(sw > 1 ? OW * ChunkedRows<acc_t, Lanes>::kChunk : 0);
  std::vector<acc_t> weights(taps * kGatherSlots, acc_t(0));
  std::vector<acc_t> tile(round_up(kTilePixels, Lanes) * CG, acc_t(0));
  std::vector<const acc_t*> rows(KD * KH);
  std::vector<int64_t> od_of(KD), row_tap(KD * KH), row_oh(KD * KH);

  for (int64_t task = begin; task < end; ++task) {
    const RowBlock rb = input_row_block(g, task);
    const int64_t ih0 = rb.row0, ih1 = rb.row1, id = rb.depth, c0 = rb.c0;
    for (int64_t kd = 0; kd < KD; ++kd) {
      const int64_t n = id + g.padding[0] - kd * g.dilation[0];
      od_of[kd] = (n >= 0 && n % sd == 0 && n / sd < OD) ? n / sd : -1;
    }
    const int64_t oh_first =
        std::max<int64_t>(0, ceil_div(ih0 + g.padding[1] - (KH - 1) * g.dilation[1], sh));
    const int64_t oh_last = std::min(OH - 1, floor_div(ih1 - 1 + g.padding[1], sh));
    for (int64_t cc = 0; cc < CG; cc += kChunk) {
      for (int64_t kd = 0; kd < KD; ++kd) {
        if (od_of[kd] < 0) continue;
        for (int64_t oh = oh_first; oh <= oh_last; ++oh) {
          stage_spread_row<acc_t, Lanes>(
              grad_y + (c0 + cc) * out_volume + (od_of[kd] * OH + oh) * OW, out_volume, OW, sw, e,
              slots, staged.chunk_width(cc), packed.data(), staged.row(kd, oh - oh_first, cc));
        }
      }
    }
    const scalar_t* w_bg = w + rb.bg * taps * out_volume;
    for (int64_t ih = ih0; ih < ih1; ++ih) {
      // The tap rows (kd, kh) whose output row reads input row ih.
      int64_t n_rows = 0;
      for (int64_t kd = 0; kd < KD; ++kd) {
        if (od_of[kd] < 0) continue;
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t n = ih + g.padding[1] - kh * g.dilation[1];
          if (n < 0 || n % sh != 0 || n / sh >= OH) continue;
          row_tap[n_rows] = kd * KH + kh;  // the tap row (kd, kh) and its output row
          row_oh[n_rows] = n / sh;
          ++n_rows;
        }
      }
      for (int64_t i0 = 0; i0 < W; i0 += kTilePixels) {
        const int64_t n = std::min(W - i0, kTilePixels);
        // Weight slot s' of tap row r and tap kw: output column (i0 + s' - e) / sw, zero
        // outside and between the columns.
        for (int64_t r = 0; r < n_rows; ++r) {
          const int64_t kd = row_tap[r] / KH;
          for (int64_t kw = 0; kw < KW; ++kw) {
            stage_spread_weights<acc_t, Lanes>(
                w_bg + (row_tap[r] * KW + kw) * out_volume + (od_of[kd] * OH + row_oh[r]) * OW, OW,
                sw, e - i0, n + KW - 1, weights.data() + (r * KW + kw) * kGatherSlots);
          }
        }
        auto set_rows = [&](int64_t cc) {
          for (int64_t r = 0; r < n_rows; ++r)
            rows[r] = staged.row(row_tap[r] / KH, row_oh[r] - oh_first, cc);
        };
        pixel_blocks<1, KW, true, acc_t, Lanes>(CG, set_rows, rows.data(), n_rows, i0, n,
                                                weights.data(), tile.data());
        store_tile<scalar_t, acc_t, Lanes>(
            tile.data(), n, CG, grad_x + c0 * in_volume + (id * H + ih) * W + i0, in_volume);
      }
    }
  }
}

// Calls f(S, KW) with the width stride and kernel width as compile-time constants.
template <typename F>
void with_shape(const Geometry& g, F&& f) {
  using std::integral_constant;
  const bool s1 = g.stride[2] == 1, k7 = g.kernel[2] == 7;
  if (s1 && k7)
    f(integral_constant<int, 1>(), integral_constant<int, 7>());
  else if (k7)
    f(integral_constant<int, 2>(), integral_constant<int, 7>());
  else if (s1)
    f(integral_constant<int, 1>(), integral_constant<int, 3>());
  else
    f(integral_constant<int, 2>(), integral_constant<int, 3>());
}

template <typename scalar_t, typename acc_t, int Lanes>
void forward(const Geometry& g, const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t begin,
             int64_t end) {
  with_shape(g, [&](auto s, auto kw) {
    forward_shape<decltype(s)::value, decltype(kw)::value, scalar_t, acc_t, Lanes>(g, x, w, y,
                                                                                   begin, end);
  });
}

// The input gradient for kernel width 7 and width stride 1 or 2 (channel_vector_handles_input):
// at kernel width 3 the staging outweighs the fewer loads (RedNet's stem: 1.5x slower).
template <typename scalar_t, typename acc_t, int Lanes>
void backward_input(const Geometry& g, const scalar_t* grad_y, const scalar_t* w, scalar_t* grad_x,
                    int64_t begin, int64_t end) {
  backward_input_shape<7, scalar_t, acc_t, Lanes>(g, grad_y, w, grad_x, begin, end);
}

}  // namespace channel_vector

// The fused forward on contiguous tensors for the geometries channel_vector_handles() accepts:
// (g, R, S, bias, x, z, y, begin, end), output-row tasks [begin, end) of g.
template <typename scalar_t, typename acc_t, int Lanes>
void fused_forward_tiles(const Geometry& g, int64_t R, const acc_t* span_weight,
                         const acc_t* span_bias, const scalar_t* x, const scalar_t* z, scalar_t* y,
                         int64_t begin, int64_t end) {
  channel_vector::with_shape(g, [&](auto s, auto kw) {
    channel_vector::fused_forward_shape<decltype(s)::value, decltype(kw)::value, scalar_t, acc_t,
                                        Lanes>(g, R, span_weight, span_bias, x, z, y, begin, end);
  });
}

}  // namespace INVOLUTION_CPU_ISA
}  // namespace cpu
}  // namespace involution
