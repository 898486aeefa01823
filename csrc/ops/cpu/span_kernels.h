// CPU kernels of the fused op's kernel generation: the 1x1 "span" convolution that turns the
// reduced tensor z into the involution kernel, and its two gradients, as small matrix products
// over a range of pixels. The fused op (fused_involution_kernel.cpp) runs them on one
// (batch, group) slab at a time, so the generated kernel lives in a cache-resident buffer and
// is never written to the tensor the unfused path would allocate.
//
// For one group g with T = KD*KH*KW taps and R reduced channels, on the pixels [n0, n1) of a
// slab (rows `ld` elements apart, pixel n at column n):
//   generate     W[t, n]  = bias[t] + sum_k S[t, k] * z[k, n]
//   grad_reduced gz[k, n] (+)= sum_t S[t, k] * dW[t, n]
//   grad_weight  gS[t, k] += sum_n dW[t, n] * z[k, n],   gb[t] += sum_n dW[t, n]
// S is the group's (T, R) block of the span weight and bias its T biases, both already in the
// accumulation type; z, W and dW are in the storage type; gz, gS and gb accumulate in the
// accumulation type. Every sum runs in a fixed order, so the results do not depend on how the
// pixels are split between threads.
//
// Register blocking: each is a product out[m, j] (+)= sum_q A[m, q] * B[q, j] that holds an
// (MT rows x NV vectors of Lanes columns) block of the result in registers and streams the
// contraction axis q (one broadcast of A and NV vector loads per NV * MT multiply-adds). The
// rows are split into blocks of nearly equal height (49 taps: 5 and 6 rows, never a last row
// alone, which would run at a quarter of the FMA rate); a last column block of at most Lanes
// columns takes one vector. grad_weight runs as the same product with the pixels as the
// contraction axis: A = dW, B = z transposed by the caller (pixels x R, zero-padded rows), so
// each gS element is one sum over the pixels in order and no lanes are reduced.
//
// Like row_kernels.h, this file is compiled once per instruction set, inside that instruction
// set's target region (it is included at the end of row_kernels.h).

#pragma once

#ifndef INVOLUTION_CPU_ISA
#error "include kernel_table.h, set the target, define INVOLUTION_CPU_ISA, then include this"
#endif

#include <algorithm>
#include <vector>

#include "kernel_table.h"
#include "simd.h"

namespace involution {
namespace cpu {
namespace INVOLUTION_CPU_ISA {

namespace span {

// A vector of Lanes copies of x: one vbroadcast (x - 0.0 is x for every x, so the compiler
// drops the subtraction; `V{} + x` would keep an add, as -0.0 + 0.0 is +0.0).
template <typename V, typename acc_t>
inline V splat(acc_t x) {
  return x - V{};
}

// out[m, j] = init(m) + sum_q A[m * a_m + q * a_q] * B[q * ldb + j] for MT rows m and NV vectors
// of columns j; out's rows are ldo apart; only the first `count` columns are stored.
// Accumulate: out += the sum instead of out = init + sum (init is then ignored).
template <int MT, int NV, bool Accumulate, typename V, typename acc_t, typename a_t,
          typename scalar_t, typename out_t>
inline void product_block(int64_t Q, const a_t* A, int64_t a_m, int64_t a_q, const acc_t* init,
                          const scalar_t* B, int64_t ldb, out_t* out, int64_t ldo, int64_t count) {
  constexpr int Lanes = sizeof(V) / sizeof(acc_t);
  V acc[MT][NV];
  for (int m = 0; m < MT; ++m) {
    const acc_t start = (!Accumulate && init != nullptr) ? init[m] : acc_t(0);
    for (int v = 0; v < NV; ++v) acc[m][v] = splat<V>(start);
  }
  for (int64_t q = 0; q < Q; ++q) {
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = load_as<V>(B + q * ldb + v * Lanes);
    const a_t* a = A + q * a_q;
    for (int m = 0; m < MT; ++m) {
      const V s = splat<V>(static_cast<acc_t>(a[m * a_m]));
      for (int v = 0; v < NV; ++v) acc[m][v] += s * b[v];
    }
  }
  for (int m = 0; m < MT; ++m) {
    for (int v = 0; v < NV; ++v) {
      const int64_t n = std::clamp<int64_t>(count - v * Lanes, 0, Lanes);
      out_t* o = out + m * ldo + v * Lanes;
      if constexpr (Accumulate) {
        // Only the accumulation type is accumulated into (gz, gS): no conversion here.
        static_assert(std::is_same_v<out_t, acc_t>);
        if (n == Lanes) {
          store(o, load<V>(o) + acc[m][v], Lanes);
        } else {
          for (int64_t l = 0; l < n; ++l) o[l] += acc[m][v][l];
        }
      } else {
        store(o, acc[m][v], n);
      }
    }
  }
}

// Rows [0, M) of one column block of NV vectors, in blocks of at most MaxMT rows and of nearly
// equal height.
template <int NV, bool Accumulate, typename V, typename acc_t, typename a_t, typename scalar_t,
          typename out_t>
inline void product_rows(int64_t M, int64_t Q, const a_t* A, int64_t a_m, int64_t a_q,
                         const acc_t* init, const scalar_t* B, int64_t ldb, out_t* out, int64_t ldo,
                         int64_t count) {
  // NV = 2: 12 accumulators, two B vectors and a broadcast in 16 registers; NV = 1: 8.
  constexpr int MaxMT = NV == 2 ? 6 : 8;
  const int64_t blocks = (M + MaxMT - 1) / MaxMT;
  int64_t m = 0;
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t mt = (M - m) / (blocks - i);  // floor(M / blocks) or one more
    const a_t* a = A + m * a_m;
    const acc_t* in = init != nullptr ? init + m : nullptr;
    out_t* o = out + m * ldo;
    auto run = [&](auto mt_const) {
      product_block<decltype(mt_const)::value, NV, Accumulate, V>(Q, a, a_m, a_q, in, B, ldb, o,
                                                                  ldo, count);
    };
    using std::integral_constant;
    switch (mt) {
      case 1:
        run(integral_constant<int, 1>());
        break;
      case 2:
        run(integral_constant<int, 2>());
        break;
      case 3:
        run(integral_constant<int, 3>());
        break;
      case 4:
        run(integral_constant<int, 4>());
        break;
      case 5:
        run(integral_constant<int, 5>());
        break;
      case 6:
        run(integral_constant<int, 6>());
        break;
      default:
        if constexpr (MaxMT > 6) {
          if (mt == 7) {
            run(integral_constant<int, 7>());
          } else {
            run(integral_constant<int, 8>());
          }
        }
    }
    m += mt;
  }
}

// The whole product over rows [0, M) and columns [n0, n1) (out's column j at out + j -
// out_shift). B's rows are read in whole vectors: `padded` says they may be read up to n0 plus
// a whole number of vectors past n1 (rows zero-padded by the caller); otherwise the last,
// partial column block goes through a zero-padded copy.
template <bool Accumulate, typename V, typename acc_t, typename a_t, typename scalar_t,
          typename out_t>
void product(int64_t M, int64_t Q, const a_t* A, int64_t a_m, int64_t a_q, const acc_t* init,
             const scalar_t* B, int64_t ldb, int64_t n0, int64_t n1, out_t* out, int64_t ldo,
             int64_t out_shift, bool padded) {
  constexpr int Lanes = sizeof(V) / sizeof(acc_t);
  constexpr int64_t Block = 2 * Lanes;
  int64_t j = n0;
  for (; j + Block <= n1; j += Block) {
    product_rows<2, Accumulate, V>(M, Q, A, a_m, a_q, init, B + j, ldb, out + (j - out_shift), ldo,
                                   Block);
  }
  if (j == n1) return;
  const int64_t count = n1 - j;
  const int64_t width = count <= Lanes ? Lanes : Block;
  const scalar_t* b = B + j;
  int64_t b_ld = ldb;
  if (!padded) {
    // The last columns, zero-padded to whole vectors: [q][width], in a buffer kept per thread.
    thread_local std::vector<scalar_t> tail;
    tail.assign(static_cast<size_t>(Q * width), scalar_t(0));
    for (int64_t q = 0; q < Q; ++q) {
      for (int64_t l = 0; l < count; ++l) tail[q * width + l] = B[q * ldb + j + l];
    }
    b = tail.data();
    b_ld = width;
  }
  if (width == Lanes) {
    product_rows<1, Accumulate, V>(M, Q, A, a_m, a_q, init, b, b_ld, out + (j - out_shift), ldo,
                                   count);
  } else {
    product_rows<2, Accumulate, V>(M, Q, A, a_m, a_q, init, b, b_ld, out + (j - out_shift), ldo,
                                   count);
  }
}

}  // namespace span

template <typename scalar_t, typename acc_t, int Lanes>
void span_generate(int64_t T, int64_t R, const acc_t* S, const acc_t* bias, const scalar_t* z,
                   int64_t ld, scalar_t* W, int64_t n0, int64_t n1) {
  using V = typename Simd<acc_t, Lanes>::type;
  // Rows m = t (stride R in S), contraction q = k (stride 1); a null bias starts rows at zero.
  span::product<false, V>(T, R, S, R, 1, bias, z, ld, n0, n1, W, ld, 0, false);
}

template <typename scalar_t, typename acc_t, int Lanes>
void span_grad_reduced(int64_t T, int64_t R, const acc_t* S, const scalar_t* dW, int64_t ld,
                       acc_t* gz, int64_t ldg, int64_t n0, int64_t n1, bool accumulate) {
  using V = typename Simd<acc_t, Lanes>::type;
  // gz[k, n] = sum_t S[t, k] dW[t, n]: rows m = k (stride 1 in S), contraction q = t (stride R).
  const acc_t* none = nullptr;
  if (accumulate) {
    span::product<true, V>(R, T, S, 1, R, none, dW, ld, n0, n1, gz, ldg, n0, false);
  } else {
    span::product<false, V>(R, T, S, 1, R, none, dW, ld, n0, n1, gz, ldg, n0, false);
  }
}

template <typename scalar_t, typename acc_t, int Lanes>
void span_grad_weight(int64_t T, int64_t R, const scalar_t* dW, int64_t ld, int64_t n0, int64_t n1,
                      const acc_t* zT, int64_t ldz, acc_t* gS, acc_t* gb) {
  using V = typename Simd<acc_t, Lanes>::type;
  if (gS != nullptr) {
    // gS[t, k] += sum_n dW[t, n] zT[n - n0, k]: rows m = t (stride ld in dW), contraction
    // q = n (stride 1), columns k of zT's zero-padded rows.
    const acc_t* none = nullptr;
    span::product<true, V>(T, n1 - n0, dW + n0, ld, 1, none, zT, ldz, 0, R, gS, R, 0, true);
  }
  if (gb != nullptr) {
    const int64_t full = n0 + (n1 - n0) / Lanes * Lanes;
    for (int64_t t = 0; t < T; ++t) {
      V acc = V{};
      const scalar_t* row = dW + t * ld;
      for (int64_t n = n0; n < full; n += Lanes) acc += load_as<V>(row + n);
      acc_t s = 0;
      for (int l = 0; l < Lanes; ++l) s += acc[l];
      for (int64_t n = full; n < n1; ++n) s += static_cast<acc_t>(row[n]);
      gb[t] += s;
    }
  }
}

}  // namespace INVOLUTION_CPU_ISA
}  // namespace cpu
}  // namespace involution
