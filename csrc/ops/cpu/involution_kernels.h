// CPU kernels for involution forward and its two gradients.
//
// Framework-free templates over (storage type, accumulation type, SIMD lanes): they take
// pointers and a Geometry. Each instruction set compiles them once (kernels_<isa>.cpp) and
// involution_cpu.cpp picks a set at run time.
//
// Layouts (contiguous, row-major):
//   x  / grad_input  : (B, C, D, H, W)
//   w  / grad_weight : (B, G, KD, KH, KW, OD, OH, OW)
//   y  / grad_output : (B, C, OD, OH, OW)
// A 2-D problem is passed with D = KD = OD = 1.
//
// Work is split into tasks of kRowsPerTask rows: one task owns a block of (b, g, depth, height)
// rows of the tensor it writes and does all C/G channels of group g, so each weight row is
// loaded once and reused by the whole group. A task first stages what it reads into small
// zero-padded buffers in the accumulation type (converting float16/bfloat16 once), laid out so
// that every inner loop is a contiguous, branch-free run of SIMD multiply-adds, whatever the
// stride, padding and dilation:
//   * forward / grad_weight read input column j*s - p + kw*d. A staged input row is split into
//     its s phases (column q*s + r - p goes to phase r, slot q), so output column j at tap kw
//     reads phase (kw*d) % s at slot j + (kw*d) / s: contiguous in j.
//   * grad_input (the gather form) needs, for input column x, the products at the output
//     columns j with j*s = x + p - kw*d. Staging weight and grad_output rows "zero-stuffed"
//     (element j at slot j*s, zeros between) turns this into a contiguous run for every stride.
// Every output element is written by exactly one task with a fixed summation order: results
// are deterministic and independent of the number of threads. No atomics; the per-task
// buffers hold a few rows per channel of the group.
//
// This file is included once by each kernels_<isa>.cpp, after all other headers and inside
// that instruction set's target region, with INVOLUTION_CPU_ISA naming the namespace that keeps
// each instruction set's instantiations apart (no symbol compiled for AVX-512 may stand in for
// the default one at link time).

#ifndef INVOLUTION_CPU_ISA
#error "include kernel_table.h, set the target, define INVOLUTION_CPU_ISA, then include this"
#endif

#include "kernel_table.h"

namespace involution {
namespace cpu {
namespace INVOLUTION_CPU_ISA {

// SIMD vectors as GCC/clang vector extensions: `acc += a * b` compiles to fused multiply-adds of
// the target instruction set (with -ffp-contract=fast).
template <typename T, int Lanes>
struct Simd;
#define INVOLUTION_SIMD(T, LANES)                                    \
  template <>                                                        \
  struct Simd<T, LANES> {                                            \
    typedef T type __attribute__((vector_size(sizeof(T) * LANES))); \
  };
INVOLUTION_SIMD(float, 4)
INVOLUTION_SIMD(float, 8)
INVOLUTION_SIMD(float, 16)
INVOLUTION_SIMD(double, 2)
INVOLUTION_SIMD(double, 4)
INVOLUTION_SIMD(double, 8)
#undef INVOLUTION_SIMD

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// bfloat16 <-> float on the bits, in loops the compiler vectorises (c10's conversions are
// per element). Narrowing rounds to nearest even and maps NaN to 0x7FC0, as c10 does.
inline float bfloat16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
inline uint16_t float_to_bfloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return (bits & 0x7FFFFFFFu) > 0x7F800000u ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
}

#if defined(INVOLUTION_CPU_F16C)
// float16 <-> float, 8 at a time, with the F16C instructions (c10's conversions are scalar).
// Narrowing rounds to nearest even, as c10 does.
inline void float16x8_to_float(const c10::Half* src, float* dst) {
  _mm256_storeu_ps(dst, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
}
inline void float_to_float16x8(const float* src, c10::Half* dst) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                   _mm256_cvtps_ph(_mm256_loadu_ps(src), _MM_FROUND_TO_NEAREST_INT));
}
#endif

// Writes lanes [0, count) of v to out, converting to the storage type.
template <typename scalar_t, typename V>
inline void store(scalar_t* out, const V& v, int64_t count) {
  if (count == static_cast<int64_t>(sizeof(V) / sizeof(v[0])) &&
      sizeof(scalar_t) == sizeof(v[0])) {
    std::memcpy(out, &v, sizeof(V));
#if defined(INVOLUTION_CPU_F16C)
  } else if constexpr (std::is_same_v<scalar_t, c10::Half> &&
                       std::is_same_v<std::decay_t<decltype(v[0])>, float>) {
    alignas(64) float lanes[sizeof(V) / sizeof(float)];
    std::memcpy(lanes, &v, sizeof(V));
    int64_t l = 0;
    for (; l + 8 <= count; l += 8) float_to_float16x8(lanes + l, out + l);
    for (; l < count; ++l) out[l] = static_cast<c10::Half>(lanes[l]);
#endif
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    auto* bits = reinterpret_cast<uint16_t*>(out);
    for (int64_t l = 0; l < count; ++l) bits[l] = float_to_bfloat16(v[l]);
  } else {
    for (int64_t l = 0; l < count; ++l) out[l] = static_cast<scalar_t>(v[l]);
  }
}

// dst[0, n) = src[0, n) converted, with SIMD copies when no conversion is needed (a plain loop
// would become a libc call per short row).
template <typename acc_t, int Lanes, typename scalar_t>
inline void copy_row(const scalar_t* src, int64_t n, acc_t* dst) {
  int64_t j = 0;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    using V = typename Simd<acc_t, Lanes>::type;
    for (; j + Lanes <= n; j += Lanes) {
      const V v = load<V>(src + j);
      std::memcpy(dst + j, &v, sizeof(V));
    }
  }
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    const auto* bits = reinterpret_cast<const uint16_t*>(src);
    for (; j < n; ++j) dst[j] = bfloat16_to_float(bits[j]);
  }
#if defined(INVOLUTION_CPU_F16C)
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
    for (; j + 8 <= n; j += 8) float16x8_to_float(src + j, dst + j);
  }
#endif
  for (; j < n; ++j) dst[j] = static_cast<acc_t>(src[j]);
}

template <typename T>
inline void zero(T* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = T(0);
}

// Stages input row `src` (width W) into s phases of `phase_len` slots:
// dst[r * phase_len + q] = src[q * s + r - p], zero outside the row.
template <typename acc_t, int Lanes, typename scalar_t>
void stage_phases(const scalar_t* src, const Geometry& g, int64_t phase_len, acc_t* dst) {
  const int64_t s = g.stride[2], p = g.padding[2], W = g.in[2];
  for (int64_t r = 0; r < s; ++r) {
    acc_t* out = dst + r * phase_len;
    // Slots q whose column q*s + r - p lies in [0, W).
    const int64_t lo = std::min(phase_len, std::max<int64_t>(0, ceil_div(p - r, s)));
    const int64_t hi = std::max(lo, std::min(phase_len, floor_div(W - 1 + p - r, s) + 1));
    zero(out, lo);
    if (s == 1) {
      copy_row<acc_t, Lanes>(src + lo - p, hi - lo, out + lo);
    } else {
      const scalar_t* in = src + lo * s + r - p;
      for (int64_t q = lo; q < hi; ++q) out[q] = static_cast<acc_t>(in[(q - lo) * s]);
    }
    zero(out + hi, phase_len - hi);
  }
}

// Stages an output-sized row `src` (width OW) zero-stuffed: dst[j*s + shift] = src[j] for the
// j that land in [0, len), zero everywhere else.
template <typename acc_t, int Lanes, typename scalar_t>
void stage_stuffed(const scalar_t* src, int64_t out_width, int64_t s, int64_t shift, int64_t len,
                   acc_t* dst) {
  const int64_t lo = std::min(out_width, std::max<int64_t>(0, ceil_div(-shift, s)));
  const int64_t hi = std::max(lo, std::min(out_width, floor_div(len - 1 - shift, s) + 1));
  if (s == 1) {
    const int64_t first = lo + shift;  // the slot of src[lo]
    zero(dst, first);
    copy_row<acc_t, Lanes>(src + lo, hi - lo, dst + first);
    zero(dst + first + (hi - lo), len - first - (hi - lo));
  } else {
    zero(dst, len);
    for (int64_t j = lo; j < hi; ++j) dst[j * s + shift] = static_cast<acc_t>(src[j]);
  }
}

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

// ---------------------------------------------------------------------------------------------
// Forward: y[c, j] = sum_taps w[tap, j] * x[c, row(tap), j*s - p + kw*d], and the gradient with
// respect to the weight, gw[tap, j] = sum_c gy[c, j] * x[c, row(tap), j*s - p + kw*d], share
// the staging of the input rows a block of output rows reads.

template <typename acc_t, int Lanes>
struct InputSlab {
  int64_t first_row = 0;  // input row of staged row 0
  int64_t rows = 0;       // staged rows per (channel, kd)
  int64_t kd_lo = 0, kd_count = 0;
  int64_t phase_len = 0;
  int64_t row_stride = 0;      // s * phase_len
  int64_t channel_stride = 0;  // kd_count * rows * row_stride
  std::vector<acc_t> data;

  // Stages the input rows read by output rows [oh0, oh1) of output depth od, for the channels
  // [c0, c0 + count) (c0 counts b*C + c).
  template <typename scalar_t>
  void stage(const Geometry& g, const scalar_t* x, int64_t c0, int64_t count, int64_t od,
             int64_t oh0, int64_t oh1) {
    const TapRange kd = taps_in_range(od, g.stride[0], g.padding[0], g.dilation[0], g.kernel[0],
                                      g.in[0]);
    kd_lo = kd.lo;
    kd_count = kd.hi - kd.lo;
    first_row = std::max<int64_t>(0, oh0 * g.stride[1] - g.padding[1]);
    const int64_t last_row = std::min(
        g.in[1] - 1, (oh1 - 1) * g.stride[1] - g.padding[1] + (g.kernel[1] - 1) * g.dilation[1]);
    rows = std::max<int64_t>(0, last_row - first_row + 1);
    phase_len = round_up(g.out[2], Lanes) + (g.kernel[2] - 1) * g.dilation[2] / g.stride[2] + 1;
    row_stride = g.stride[2] * phase_len;
    channel_stride = kd_count * rows * row_stride;
    if (static_cast<int64_t>(column_offset.size()) != g.kernel[2]) plan_columns(g);
    if (static_cast<int64_t>(data.size()) < count * channel_stride) data.resize(count * channel_stride);
    const int64_t plane = g.in[1] * g.in[2];
    for (int64_t c = 0; c < count; ++c) {
      for (int64_t k = 0; k < kd_count; ++k) {
        const int64_t id = od * g.stride[0] - g.padding[0] + (kd_lo + k) * g.dilation[0];
        const scalar_t* src = x + (c0 + c) * g.in_volume() + id * plane + first_row * g.in[2];
        acc_t* dst = data.data() + c * channel_stride + k * rows * row_stride;
        for (int64_t r = 0; r < rows; ++r) {
          stage_phases<acc_t, Lanes>(src + r * g.in[2], g, phase_len, dst + r * row_stride);
        }
      }
    }
  }

  // The staged row that output row oh reads at tap row (kd, kh), for channel 0 (channel c is
  // c * channel_stride further); output column 0 at tap column kw reads column_offset[kw] in it.
  const acc_t* row(const Geometry& g, int64_t kd, int64_t oh, int64_t kh) const {
    const int64_t r = oh * g.stride[1] - g.padding[1] + kh * g.dilation[1] - first_row;
    return data.data() + ((kd - kd_lo) * rows + r) * row_stride;
  }
  std::vector<int64_t> column_offset;

  void plan_columns(const Geometry& g) {
    column_offset.resize(g.kernel[2]);
    for (int64_t kw = 0; kw < g.kernel[2]; ++kw) {
      const int64_t off = kw * g.dilation[2];
      column_offset[kw] = (off % g.stride[2]) * phase_len + off / g.stride[2];
    }
  }
};

template <typename scalar_t, typename acc_t, int Lanes>
void forward(const Geometry& g, const scalar_t* x, const scalar_t* w, scalar_t* y, int64_t begin,
             int64_t end) {
  using V = typename Simd<acc_t, Lanes>::type;
  // Channels sharing each weight load; also the independent accumulators that hide the
  // multiply-add latency.
  constexpr int CB = 8;
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t KH = g.kernel[1], KW = g.kernel[2];
  const int64_t cpg = g.channels_per_group(), taps = g.taps(), out_volume = g.out_volume();
  const int64_t ow_padded = round_up(OW, Lanes);
  const int64_t blocks = ceil_div(OH, kRowsPerTask);

  InputSlab<acc_t, Lanes> slab;
  std::vector<acc_t> w_staged(taps * kRowsPerTask * ow_padded);  // [tap][row][ow_padded]

  for (int64_t task = begin; task < end; ++task) {
    const int64_t oh0 = (task % blocks) * kRowsPerTask, oh1 = std::min(OH, oh0 + kRowsPerTask);
    const int64_t od = (task / blocks) % OD, bg = task / (blocks * OD);
    const int64_t c0 = (bg / g.groups) * g.channels + (bg % g.groups) * cpg;  // b*C + first c
    const int64_t nrows = oh1 - oh0;
    slab.stage(g, x, c0, cpg, od, oh0, oh1);
    const scalar_t* w_task = w + bg * taps * out_volume + (od * OH + oh0) * OW;
    for (int64_t t = 0; t < taps; ++t) {
      for (int64_t r = 0; r < nrows; ++r) {
        acc_t* dst = w_staged.data() + (t * kRowsPerTask + r) * ow_padded;
        copy_row<acc_t, Lanes>(w_task + t * out_volume + r * OW, OW, dst);
        zero(dst + OW, ow_padded - OW);
      }
    }

    const int64_t* column_offset = slab.column_offset.data();
    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const TapRange kh = taps_in_range(oh, g.stride[1], g.padding[1], g.dilation[1], KH, g.in[1]);
      scalar_t* y_row = y + c0 * out_volume + (od * OH + oh) * OW;
      auto block = [&](auto channels, int64_t c, int64_t j0) {
        constexpr int NB = decltype(channels)::value;
        const int64_t w_tap_stride = kRowsPerTask * ow_padded, kw_count = KW;
        V acc[NB] = {};
        for (int64_t kd = slab.kd_lo; kd < slab.kd_lo + slab.kd_count; ++kd) {
          for (int64_t u = kh.lo; u < kh.hi; ++u) {
            const acc_t* w_tap = w_staged.data() +
                                 (((kd * KH + u) * KW) * kRowsPerTask + (oh - oh0)) * ow_padded + j0;
            const acc_t* x_row = slab.row(g, kd, oh, u) + c * slab.channel_stride + j0;
            const acc_t* xc[NB];
            for (int cb = 0; cb < NB; ++cb) xc[cb] = x_row + cb * slab.channel_stride;
            for (int64_t v = 0; v < kw_count; ++v) {
              const V wv = load<V>(w_tap + v * w_tap_stride);
              const int64_t off = column_offset[v];
              for (int cb = 0; cb < NB; ++cb) acc[cb] += wv * load<V>(xc[cb] + off);
            }
          }
        }
        const int64_t count = std::min<int64_t>(Lanes, OW - j0);
        for (int cb = 0; cb < NB; ++cb) store(y_row + (c + cb) * out_volume + j0, acc[cb], count);
      };
      // Channel blocks outermost: one block's staged rows and the row's weights stay in L1.
      int64_t c = 0;
      for (; c + CB <= cpg; c += CB) {
        for (int64_t j0 = 0; j0 < OW; j0 += Lanes) block(std::integral_constant<int, CB>(), c, j0);
      }
      for (; c < cpg; ++c) {
        for (int64_t j0 = 0; j0 < OW; j0 += Lanes) block(std::integral_constant<int, 1>(), c, j0);
      }
    }
  }
}

template <typename scalar_t, typename acc_t, int Lanes>
void backward_weight(const Geometry& g, const scalar_t* grad_y, const scalar_t* x,
                     scalar_t* grad_w, int64_t begin, int64_t end) {
  using V = typename Simd<acc_t, Lanes>::type;
  constexpr int TB = 4;  // taps sharing each grad_output load
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t cpg = g.channels_per_group(), taps = g.taps(), out_volume = g.out_volume();
  const int64_t ow_padded = round_up(OW, Lanes);
  const int64_t blocks = ceil_div(OH, kRowsPerTask);

  InputSlab<acc_t, Lanes> slab;
  std::vector<acc_t> gy_staged(cpg * kRowsPerTask * ow_padded);  // [channel][row][ow_padded]

  for (int64_t task = begin; task < end; ++task) {
    const int64_t oh0 = (task % blocks) * kRowsPerTask, oh1 = std::min(OH, oh0 + kRowsPerTask);
    const int64_t od = (task / blocks) % OD, bg = task / (blocks * OD);
    const int64_t c0 = (bg / g.groups) * g.channels + (bg % g.groups) * cpg;
    slab.stage(g, x, c0, cpg, od, oh0, oh1);
    for (int64_t c = 0; c < cpg; ++c) {
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        acc_t* dst = gy_staged.data() + (c * kRowsPerTask + oh - oh0) * ow_padded;
        copy_row<acc_t, Lanes>(grad_y + (c0 + c) * out_volume + (od * OH + oh) * OW, OW, dst);
        zero(dst + OW, ow_padded - OW);
      }
    }
    const int64_t gy_channel_stride = kRowsPerTask * ow_padded;
    scalar_t* gw_task = grad_w + bg * taps * out_volume + od * OH * OW;

    for (int64_t oh = oh0; oh < oh1; ++oh) {
      const TapRange kh = taps_in_range(oh, g.stride[1], g.padding[1], g.dilation[1], KH, g.in[1]);
      const acc_t* gy_row = gy_staged.data() + (oh - oh0) * ow_padded;
      for (int64_t kd = 0; kd < KD; ++kd) {
        for (int64_t u = 0; u < KH; ++u) {
          scalar_t* gw_row = gw_task + ((kd * KH + u) * KW) * out_volume + oh * OW;
          const bool valid = kd >= slab.kd_lo && kd < slab.kd_lo + slab.kd_count && u >= kh.lo &&
                             u < kh.hi;
          if (!valid) {  // taps that read only padding
            for (int64_t v = 0; v < KW; ++v) zero(gw_row + v * out_volume, OW);
            continue;
          }
          for (int64_t j0 = 0; j0 < OW; j0 += Lanes) {
            const int64_t count = std::min<int64_t>(Lanes, OW - j0);
            const acc_t* x_row = slab.row(g, kd, oh, u) + j0;
            auto block = [&](auto tap_count, int64_t v0) {
              constexpr int NT = decltype(tap_count)::value;
              const acc_t* xp[NT];
              for (int tb = 0; tb < NT; ++tb) xp[tb] = x_row + slab.column_offset[v0 + tb];
              V acc[NT] = {};
              for (int64_t c = 0; c < cpg; ++c) {
                const V gv = load<V>(gy_row + c * gy_channel_stride + j0);
                for (int tb = 0; tb < NT; ++tb) {
                  acc[tb] += gv * load<V>(xp[tb] + c * slab.channel_stride);
                }
              }
              for (int tb = 0; tb < NT; ++tb) store(gw_row + (v0 + tb) * out_volume + j0, acc[tb], count);
            };
            int64_t v = 0;
            for (; v + TB <= KW; v += TB) block(std::integral_constant<int, TB>(), v);
            for (; v < KW; ++v) block(std::integral_constant<int, 1>(), v);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient with respect to the input, gather form:
// gx[c, x] = sum over (kd, kh, kw) and the output column j with j*s = x + p - kw*d
//            of w[tap, j] * gy[c, j].

template <typename scalar_t, typename acc_t, int Lanes>
void backward_input(const Geometry& g, const scalar_t* grad_y, const scalar_t* w,
                    scalar_t* grad_x, int64_t begin, int64_t end) {
  using V = typename Simd<acc_t, Lanes>::type;
  constexpr int CB = 8;  // channels sharing each weight load (and independent accumulators)
  const int64_t D = g.in[0], H = g.in[1], W = g.in[2];
  const int64_t OD = g.out[0], OH = g.out[1], OW = g.out[2];
  const int64_t KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const int64_t sd = g.stride[0], sh = g.stride[1], s = g.stride[2];
  const int64_t cpg = g.channels_per_group(), taps = g.taps();
  const int64_t in_volume = g.in_volume(), out_volume = g.out_volume();
  const int64_t blocks = ceil_div(H, kRowsPerTask);
  // Slot q of a stuffed row holds output column j with j*s = q + p - (KW-1)*d, so input
  // column x at tap kw reads slot x + (KW-1-kw)*d.
  const int64_t shift = (KW - 1) * g.dilation[2] - g.padding[2];
  const int64_t len = round_up(W, Lanes) + (KW - 1) * g.dilation[2];

  // grad_output rows read by this block, per (channel, kd, output row): stuffed.
  std::vector<acc_t> gy_staged;
  // weight rows per (kd, input row of the block, kh, kw): stuffed; each is read by one input row.
  std::vector<acc_t> w_staged(KD * kRowsPerTask * KH * KW * len);
  std::vector<int64_t> od_of(KD), oh_of(kRowsPerTask * KH);

  for (int64_t task = begin; task < end; ++task) {
    const int64_t ih0 = (task % blocks) * kRowsPerTask, ih1 = std::min(H, ih0 + kRowsPerTask);
    const int64_t id = (task / blocks) % D, bg = task / (blocks * D);
    const int64_t c0 = (bg / g.groups) * g.channels + (bg % g.groups) * cpg;

    // Output depths that read input depth id, and output rows that read rows [ih0, ih1).
    for (int64_t kd = 0; kd < KD; ++kd) {
      const int64_t n = id + g.padding[0] - kd * g.dilation[0];
      od_of[kd] = (n >= 0 && n % sd == 0 && n / sd < OD) ? n / sd : -1;
    }
    const int64_t oh_first = std::max<int64_t>(
        0, ceil_div(ih0 + g.padding[1] - (KH - 1) * g.dilation[1], sh));
    const int64_t oh_last = std::min(OH - 1, floor_div(ih1 - 1 + g.padding[1], sh));
    const int64_t out_rows = std::max<int64_t>(0, oh_last - oh_first + 1);
    const int64_t gy_channel_stride = KD * out_rows * len;
    if (static_cast<int64_t>(gy_staged.size()) < cpg * gy_channel_stride) gy_staged.resize(cpg * gy_channel_stride);
    for (int64_t c = 0; c < cpg; ++c) {
      for (int64_t kd = 0; kd < KD; ++kd) {
        if (od_of[kd] < 0) continue;
        for (int64_t r = 0; r < out_rows; ++r) {
          const scalar_t* src = grad_y + (c0 + c) * out_volume + (od_of[kd] * OH + oh_first + r) * OW;
          stage_stuffed<acc_t, Lanes>(src, OW, s, shift, len,
                                      gy_staged.data() + c * gy_channel_stride + (kd * out_rows + r) * len);
        }
      }
    }
    // For input row ih and tap row kh, the output row that reads it (or -1).
    for (int64_t ih = ih0; ih < ih1; ++ih) {
      for (int64_t kh = 0; kh < KH; ++kh) {
        const int64_t n = ih + g.padding[1] - kh * g.dilation[1];
        oh_of[(ih - ih0) * KH + kh] = (n >= 0 && n % sh == 0 && n / sh < OH) ? n / sh : -1;
      }
    }
    auto output_row = [&](int64_t ih, int64_t kh) { return oh_of[(ih - ih0) * KH + kh]; };
    const scalar_t* w_bg = w + bg * taps * out_volume;
    for (int64_t kd = 0; kd < KD; ++kd) {
      if (od_of[kd] < 0) continue;
      for (int64_t ih = ih0; ih < ih1; ++ih) {
        for (int64_t kh = 0; kh < KH; ++kh) {
          const int64_t oh = output_row(ih, kh);
          if (oh < 0) continue;
          for (int64_t kw = 0; kw < KW; ++kw) {
            const scalar_t* src = w_bg + ((kd * KH + kh) * KW + kw) * out_volume + (od_of[kd] * OH + oh) * OW;
            stage_stuffed<acc_t, Lanes>(src, OW, s, shift, len,
                                        w_staged.data() + (((kd * kRowsPerTask + ih - ih0) * KH + kh) * KW + kw) * len);
          }
        }
      }
    }

    for (int64_t ih = ih0; ih < ih1; ++ih) {
      scalar_t* gx_row = grad_x + c0 * in_volume + (id * H + ih) * W;
      auto block = [&](auto channels, int64_t c, int64_t x0) {
        constexpr int NB = decltype(channels)::value;
        const int64_t kw_count = KW, dilation = g.dilation[2];
        V acc[NB] = {};
        for (int64_t kd = 0; kd < KD; ++kd) {
          if (od_of[kd] < 0) continue;
          for (int64_t kh = 0; kh < KH; ++kh) {
            const int64_t oh = output_row(ih, kh);
            if (oh < 0) continue;
            const acc_t* gy_row = gy_staged.data() + c * gy_channel_stride +
                                  (kd * out_rows + oh - oh_first) * len + x0;
            const acc_t* w_tap = w_staged.data() + ((kd * kRowsPerTask + ih - ih0) * KH + kh) * KW * len + x0;
            const acc_t* gyc[NB];
            for (int cb = 0; cb < NB; ++cb) gyc[cb] = gy_row + cb * gy_channel_stride;
            for (int64_t kw = 0; kw < kw_count; ++kw) {
              const int64_t q = (kw_count - 1 - kw) * dilation;
              const V wv = load<V>(w_tap + kw * len + q);
              for (int cb = 0; cb < NB; ++cb) acc[cb] += wv * load<V>(gyc[cb] + q);
            }
          }
        }
        const int64_t count = std::min<int64_t>(Lanes, W - x0);
        for (int cb = 0; cb < NB; ++cb) store(gx_row + (c + cb) * in_volume + x0, acc[cb], count);
      };
      int64_t c = 0;
      for (; c + CB <= cpg; c += CB) {
        for (int64_t x0 = 0; x0 < W; x0 += Lanes) block(std::integral_constant<int, CB>(), c, x0);
      }
      for (; c < cpg; ++c) {
        for (int64_t x0 = 0; x0 < W; x0 += Lanes) block(std::integral_constant<int, 1>(), c, x0);
      }
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
    return Kernels<scalar_t>{&forward<scalar_t, acc_t, L>, &backward_input<scalar_t, acc_t, L>,
                             &backward_weight<scalar_t, acc_t, L>};
  };
  using F = std::integral_constant<int, FloatLanes>;
  using D = std::integral_constant<int, FloatLanes / 2>;
  return {kernels(double(), double(), D()), kernels(float(), float(), F()),
          kernels(c10::Half(), float(), F()), kernels(c10::BFloat16(), float(), F())};
}

}  // namespace INVOLUTION_CPU_ISA
}  // namespace cpu
}  // namespace involution
