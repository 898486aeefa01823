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
// Register blocking: generate and grad_reduced hold an (MT rows x 2 vectors of Lanes columns)
// block of the result in registers and stream the contraction axis (one broadcast of S and two
// vector loads per 2 * MT multiply-adds); grad_weight holds (4 taps x 3 channels) vector
// partial sums over the pixels and reduces them across lanes at the end. The last, partial
// column block goes through a zero-padded copy, so no load runs past a row.
//
// Like row_kernels.h, this file is compiled once per instruction set, inside that instruction
// set's target region (it is included at the end of row_kernels.h).

#pragma once

#ifndef INVOLUTION_CPU_ISA
#error "include kernel_table.h, set the target, define INVOLUTION_CPU_ISA, then include this"
#endif

#include "kernel_table.h"
#include "simd.h"

namespace involution {
namespace cpu {
namespace INVOLUTION_CPU_ISA {

namespace span {

// out[m, j] = init(m) + sum_q A[m * a_m + q * a_q] * B[q, j] for MT rows m and 2 vectors of
// columns j; B's rows are ldb apart, out's ldo apart; only `count` columns are stored.
// Accumulate: out += the sum instead of out = init + sum (init is then ignored).
template <int MT, bool Accumulate, typename V, typename acc_t, typename scalar_t, typename out_t>
inline void product_block(int64_t Q, const acc_t* A, int64_t a_m, int64_t a_q, const acc_t* init,
                          const scalar_t* B, int64_t ldb, out_t* out, int64_t ldo, int64_t count) {
  constexpr int Lanes = sizeof(V) / sizeof(acc_t);
  V acc[MT][2];
  for (int m = 0; m < MT; ++m) {
    const acc_t start = (!Accumulate && init != nullptr) ? init[m] : acc_t(0);
    acc[m][0] = V{} + start;
    acc[m][1] = V{} + start;
  }
  for (int64_t q = 0; q < Q; ++q) {
    const V b0 = load_as<V>(B + q * ldb);
    const V b1 = load_as<V>(B + q * ldb + Lanes);
    const acc_t* a = A + q * a_q;
    for (int m = 0; m < MT; ++m) {
      const V s = V{} + a[m * a_m];
      acc[m][0] += s * b0;
      acc[m][1] += s * b1;
    }
  }
  for (int m = 0; m < MT; ++m) {
    out_t* o = out + m * ldo;
    if constexpr (Accumulate) {
      // Only the accumulation type is accumulated into (gz), so no conversion happens here.
      static_assert(std::is_same_v<out_t, acc_t>);
      const int64_t c0 = std::min<int64_t>(count, Lanes), c1 = count - c0;
      for (int64_t l = 0; l < c0; ++l) o[l] += acc[m][0][l];
      for (int64_t l = 0; l < c1; ++l) o[Lanes + l] += acc[m][1][l];
    } else if (count == 2 * Lanes) {
      store(o, acc[m][0], Lanes);
      store(o + Lanes, acc[m][1], Lanes);
    } else {
      store(o, acc[m][0], std::min<int64_t>(count, Lanes));
      if (count > Lanes) store(o + Lanes, acc[m][1], count - Lanes);
    }
  }
}

// The whole product over rows [0, M) and pixels [n0, n1); see product_block.
template <bool Accumulate, typename V, typename acc_t, typename scalar_t, typename out_t>
void product(int64_t M, int64_t Q, const acc_t* A, int64_t a_m, int64_t a_q, const acc_t* init,
             const scalar_t* B, int64_t ldb, int64_t n0, int64_t n1, out_t* out, int64_t ldo,
             int64_t out_shift) {
  constexpr int Lanes = sizeof(V) / sizeof(acc_t);
  constexpr int64_t Block = 2 * Lanes;
  // Six rows x two vectors: 12 accumulators, two B vectors and a broadcast in 16 registers.
  auto rows = [&](int64_t j, const scalar_t* b, int64_t b_ld, int64_t count) {
    out_t* o = out + (j - out_shift);  // pixel j's column
    int64_t m = 0;
    for (; m + 6 <= M; m += 6) {
      product_block<6, Accumulate, V>(Q, A + m * a_m, a_m, a_q, init ? init + m : nullptr, b, b_ld,
                                      o + m * ldo, ldo, count);
    }
    for (; m + 2 <= M; m += 2) {
      product_block<2, Accumulate, V>(Q, A + m * a_m, a_m, a_q, init ? init + m : nullptr, b, b_ld,
                                      o + m * ldo, ldo, count);
    }
    for (; m < M; ++m) {
      product_block<1, Accumulate, V>(Q, A + m * a_m, a_m, a_q, init ? init + m : nullptr, b, b_ld,
                                      o + m * ldo, ldo, count);
    }
  };
  int64_t j = n0;
  for (; j + Block <= n1; j += Block) rows(j, B + j, ldb, Block);
  if (j < n1) {
    // The last columns, zero-padded to a whole block: [q][Block].
    std::vector<scalar_t> tail(Q * Block, scalar_t(0));
    for (int64_t q = 0; q < Q; ++q) {
      for (int64_t l = 0; l < n1 - j; ++l) tail[q * Block + l] = B[q * ldb + j + l];
    }
    rows(j, tail.data(), Block, n1 - j);
  }
}

}  // namespace span

template <typename scalar_t, typename acc_t, int Lanes>
void span_generate(int64_t T, int64_t R, const acc_t* S, const acc_t* bias, const scalar_t* z,
                   int64_t ld, scalar_t* W, int64_t n0, int64_t n1) {
  using V = typename Simd<acc_t, Lanes>::type;
  // Rows m = t (stride R in S), contraction q = k (stride 1); a null bias starts rows at zero.
  span::product<false, V>(T, R, S, R, 1, bias, z, ld, n0, n1, W, ld, 0);
}

template <typename scalar_t, typename acc_t, int Lanes>
void span_grad_reduced(int64_t T, int64_t R, const acc_t* S, const scalar_t* dW, int64_t ld,
                       acc_t* gz, int64_t ldg, int64_t n0, int64_t n1, bool accumulate) {
  using V = typename Simd<acc_t, Lanes>::type;
  // gz[k, n] = sum_t S[t, k] dW[t, n]: rows m = k (stride 1 in S), contraction q = t (stride R).
  if (accumulate) {
    span::product<true, V>(R, T, S, 1, R, static_cast<const acc_t*>(nullptr), dW, ld, n0, n1, gz,
                           ldg, n0);
  } else {
    span::product<false, V>(R, T, S, 1, R, static_cast<const acc_t*>(nullptr), dW, ld, n0, n1, gz,
                            ldg, n0);
  }
}

template <typename scalar_t, typename acc_t, int Lanes>
void span_grad_weight(int64_t T, int64_t R, const scalar_t* dW, const scalar_t* z, int64_t ld,
                      int64_t n0, int64_t n1, acc_t* gS, acc_t* gb) {
  using V = typename Simd<acc_t, Lanes>::type;
  constexpr int MT = 4, MK = 3;
  const int64_t full = n0 + (n1 - n0) / Lanes * Lanes;
  auto hsum = [](const V& v) {
    acc_t s = 0;
    for (int l = 0; l < Lanes; ++l) s += v[l];
    return s;
  };
  // Sums of dW rows t.. and z rows k.. over the pixels, in blocks of (mt, mk) rows.
  auto block = [&](auto mt_const, auto mk_const, int64_t t, int64_t k) {
    constexpr int mt = decltype(mt_const)::value, mk = decltype(mk_const)::value;
    V acc[mt][mk];
    for (int a = 0; a < mt; ++a)
      for (int b = 0; b < mk; ++b) acc[a][b] = V{};
    for (int64_t n = n0; n < full; n += Lanes) {
      V zv[mk];
      for (int b = 0; b < mk; ++b) zv[b] = load_as<V>(z + (k + b) * ld + n);
      for (int a = 0; a < mt; ++a) {
        const V d = load_as<V>(dW + (t + a) * ld + n);
        for (int b = 0; b < mk; ++b) acc[a][b] += d * zv[b];
      }
    }
    for (int a = 0; a < mt; ++a) {
      for (int b = 0; b < mk; ++b) {
        acc_t s = hsum(acc[a][b]);
        for (int64_t n = full; n < n1; ++n) {
          s += static_cast<acc_t>(dW[(t + a) * ld + n]) * static_cast<acc_t>(z[(k + b) * ld + n]);
        }
        gS[(t + a) * R + k + b] += s;
      }
    }
  };
  using std::integral_constant;
  int64_t t = gS != nullptr ? 0 : T;  // no gS wanted: only gb below
  for (; t + MT <= T; t += MT) {
    int64_t k = 0;
    for (; k + MK <= R; k += MK)
      block(integral_constant<int, MT>(), integral_constant<int, MK>(), t, k);
    for (; k < R; ++k) block(integral_constant<int, MT>(), integral_constant<int, 1>(), t, k);
  }
  for (; t < T; ++t) {
    int64_t k = 0;
    for (; k + MK <= R; k += MK)
      block(integral_constant<int, 1>(), integral_constant<int, MK>(), t, k);
    for (; k < R; ++k) block(integral_constant<int, 1>(), integral_constant<int, 1>(), t, k);
  }
  if (gb != nullptr) {
    for (int64_t tt = 0; tt < T; ++tt) {
      V acc = V{};
      const scalar_t* row = dW + tt * ld;
      for (int64_t n = n0; n < full; n += Lanes) acc += load_as<V>(row + n);
      acc_t s = hsum(acc);
      for (int64_t n = full; n < n1; ++n) s += static_cast<acc_t>(row[n]);
      gb[tt] += s;
    }
  }
}

}  // namespace INVOLUTION_CPU_ISA
}  // namespace cpu
}  // namespace involution
