// Generic SIMD and float16/bfloat16 conversion helpers of the CPU kernels (row_kernels.h):
// vector types, loads and stores that convert between the storage and accumulation types,
// staged-row copies, and software prefetch.
//
// Like row_kernels.h, this is compiled once per instruction set, inside that instruction set's
// target region, in the namespace INVOLUTION_CPU_ISA names.

#pragma once

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

// Unsigned integer vectors of N lanes, for conversions on the bits of float lanes.
template <int N>
struct Bits {
  typedef uint32_t u32 __attribute__((vector_size(4 * N)));
  typedef uint16_t u16 __attribute__((vector_size(2 * N)));
};

template <typename V, typename T>
inline V load(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// bfloat16 -> float on the bits, in loops the compiler vectorises (c10's conversions are per
// element). store() narrows a whole vector the same way.
inline float bfloat16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
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
    // Whole groups of 8 lanes, also for a partial vector (c10's scalar conversion is slow).
    constexpr int N = sizeof(V) / sizeof(float);
    alignas(64) float lanes[N];
    std::memcpy(lanes, &v, sizeof(V));
    if (count == N) {
      for (int l = 0; l < N; l += 8) float_to_float16x8(lanes + l, out + l);
    } else {
      c10::Half narrow[N];
      for (int l = 0; l < N; l += 8) float_to_float16x8(lanes + l, narrow + l);
      for (int64_t l = 0; l < count; ++l) out[l] = narrow[l];
    }
#endif
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // float -> bfloat16 on the bits of every lane at once: rounds to nearest even and maps NaN
    // to 0x7FC0, as c10 does.
    using Bits32 = typename Bits<sizeof(V) / sizeof(float)>::u32;
    using Bits16 = typename Bits<sizeof(V) / sizeof(float)>::u16;
    Bits32 bits;
    std::memcpy(&bits, &v, sizeof(V));
    const Bits32 nan = (Bits32)((bits & 0x7FFFFFFFu) > 0x7F800000u);  // all ones where NaN
    const Bits32 rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    const Bits32 result = (rounded & ~nan) | (nan & 0x7FC0u);
    const Bits16 narrow = __builtin_convertvector(result, Bits16);
    if (count == static_cast<int64_t>(sizeof(V) / sizeof(float))) {
      std::memcpy(out, &narrow, sizeof(narrow));
    } else {
      auto* bits = reinterpret_cast<uint16_t*>(out);
      for (int64_t l = 0; l < count; ++l) bits[l] = narrow[l];
    }
  } else {
    for (int64_t l = 0; l < count; ++l) out[l] = static_cast<scalar_t>(v[l]);
  }
}

// Loads one vector of Lanes elements of type scalar_t, converted to the accumulation type.
template <typename V, typename scalar_t>
inline V load_as(const scalar_t* p) {
  using acc_t = std::decay_t<decltype(V{}[0])>;
  constexpr int Lanes = sizeof(V) / sizeof(acc_t);
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return load<V>(p);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    // bfloat16 is the upper half of a float: widen the bits and shift them into place.
    using Bits32 = typename Bits<Lanes>::u32;
    using Bits16 = typename Bits<Lanes>::u16;
    const Bits32 bits = __builtin_convertvector(load<Bits16>(p), Bits32) << 16;
    V v;
    std::memcpy(&v, &bits, sizeof(V));
    return v;
  } else {
#if defined(INVOLUTION_CPU_F16C)
    if constexpr (Lanes % 8 == 0) {
      V v;
      for (int l = 0; l < Lanes; l += 8) {
        const __m256 f =
            _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + l)));
        std::memcpy(reinterpret_cast<char*>(&v) + l * sizeof(float), &f, sizeof(f));
      }
      return v;
    }
#endif
    V v;
    for (int l = 0; l < Lanes; ++l) v[l] = static_cast<acc_t>(p[l]);
    return v;
  }
}

// dst[0, n) = src[0, n) converted, with SIMD copies when no conversion is needed (a plain loop
// would become a libc call per short row).
template <typename acc_t, int Lanes, typename scalar_t>
inline void copy_row(const scalar_t* src, int64_t n, acc_t* dst) {
  int64_t j = 0;
  constexpr bool bfloat16_to_float32 =
      std::is_same_v<scalar_t, c10::BFloat16> && std::is_same_v<acc_t, float>;
  if constexpr (std::is_same_v<scalar_t, acc_t> || bfloat16_to_float32) {
    using V = typename Simd<acc_t, Lanes>::type;
    for (; j + Lanes <= n; j += Lanes) {
      const V v = load_as<V>(src + j);
      std::memcpy(dst + j, &v, sizeof(V));
    }
    if (j < n && n >= Lanes) {  // the rest: one vector ending at n, overlapping copied ones
      const V v = load_as<V>(src + n - Lanes);
      std::memcpy(dst + n - Lanes, &v, sizeof(V));
      j = n;
    }
  }
  if constexpr (bfloat16_to_float32) {  // rows shorter than a vector
    const auto* bits = reinterpret_cast<const uint16_t*>(src);
    for (; j < n; ++j) dst[j] = bfloat16_to_float(bits[j]);
  }
#if defined(INVOLUTION_CPU_F16C)
  if constexpr (std::is_same_v<scalar_t, c10::Half> && std::is_same_v<acc_t, float>) {
    for (; j + 8 <= n; j += 8) float16x8_to_float(src + j, dst + j);
    if (j < n && n >= 8) {  // the rest: one group ending at n, overlapping converted ones
      float16x8_to_float(src + n - 8, dst + n - 8);
      j = n;
    }
    if (j < n) {  // the last partial group, also with F16C (c10's scalar conversion is slow)
      c10::Half wide[8] = {};
      float converted[8];
      for (int64_t k = 0; k < n - j; ++k) wide[k] = src[j + k];
      float16x8_to_float(wide, converted);
      for (int64_t k = 0; k < n - j; ++k) dst[j + k] = converted[k];
      j = n;
    }
  }
#endif
  for (; j < n; ++j) dst[j] = static_cast<acc_t>(src[j]);
}

template <typename T>
inline void zero(T* dst, int64_t n) {
  for (int64_t j = 0; j < n; ++j) dst[j] = T(0);
}

// dst[0, n) = src[0, n) converted to the storage type; src holds round_up(n, Lanes) elements.
template <int Lanes, typename acc_t, typename scalar_t>
void store_row(const acc_t* src, int64_t n, scalar_t* dst) {
  using V = typename Simd<acc_t, Lanes>::type;
  for (int64_t j = 0; j < n; j += Lanes) store(dst + j, load<V>(src + j), std::min<int64_t>(Lanes, n - j));
}

// Software prefetch, for the operands that come as one short run per tap or per channel
// (weights, grad_output, the weight gradient): too many runs, and too short, for the hardware
// prefetchers to follow. The kernels fetch them one row ahead, spread over the current row's
// work (a burst of a whole row's runs stalls on full miss buffers).
//
// Asks for `count` rows of n elements, `stride` apart, to be brought into the cache (Write = 1:
// to be written).
template <int Write = 0, typename T>
inline void prefetch_rows(const T* p, int64_t count, int64_t stride, int64_t n) {
#if defined(__GNUC__) || defined(__clang__)
  const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
  if (bytes <= 0) return;
  for (int64_t r = 0; r < count; ++r) {
    const char* row = reinterpret_cast<const char*>(p + r * stride);
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b, Write, 3);
    __builtin_prefetch(row + bytes - 1, Write, 3);
  }
#endif
}

// One cache line in each of count rows stride elements apart: the line holding p[r * stride].
template <int Write = 0, typename T>
inline void prefetch_line_per_row(const T* p, int64_t count, int64_t stride) {
#if defined(__GNUC__) || defined(__clang__)
  for (int64_t r = 0; r < count; ++r) __builtin_prefetch(p + r * stride, Write, 3);
#endif
}

}  // namespace INVOLUTION_CPU_ISA
}  // namespace cpu
}  // namespace involution
