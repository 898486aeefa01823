// Runs the fused op's CUDA kernels (csrc/ops/cuda/fused.cuh) on the host, under the block
// emulation of emulate_block.h (threads as fibers, shared memory checked against the
// barriers), against a plain loop reference of the composite: W = conv1x1(z, S) + bias, then
// involution, and the gradients of all four tensors.
//
// Random geometries: 2-D and 3-D, strides, dilations, paddings, uneven kernels, 1 to 4 groups
// of 1 to 20 channels (below, at and above a channel block), R from 0 to 70 (not a multiple of
// any chunk: 1, 2 or 3 chunks of z), with and without bias, batch 0 to 3, float64 and float32.
// Every tap-chunk specialisation (KT = 9, 27, 49) runs on every case, so the kernels' chunked
// paths (T > KT) run too, and the groups per block vary from 1 to G. The grids are smaller
// than the problems (every block takes several grid-stride steps along each axis), outputs and
// the partial-sum buffer start as NaN (every element used must be written), and the span
// weight gradient is also run with other split counts and grids, which must give the same bits
// for the same splits. CI builds this under AddressSanitizer and UndefinedBehaviorSanitizer
// (make emulate).

// clang-format off
#include "emulate_block.h"  // before the kernels: what nvcc would provide, the block runner
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/ops/cuda/fused.cuh"

namespace {

using involution::Geometry;
using involution::emulation::run_blocks;
using namespace involution::cuda;

struct Problem {
  Geometry g;
  int64_t R = 0;
  bool bias = false;
};

struct Data {
  std::vector<double> x, z, S, bias, gy;
};

struct Reference {
  std::vector<double> y, gx, gz, gS, gb;
};

int64_t rows(const Problem& p) { return p.g.groups * p.g.taps(); }

// The composite by its definition: W = span(z), then involution with zero padding.
Reference reference(const Problem& p, const Data& in) {
  const Geometry& g = p.g;
  const int64_t B = g.batch, C = g.channels, G = g.groups, T = g.taps(), R = p.R;
  const int64_t Q = g.in_volume(), P = g.out_volume(), cpg = C / G;
  std::vector<double> W(B * G * T * P), gW(W.size(), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t gt = 0; gt < G * T; ++gt)
      for (int64_t o = 0; o < P; ++o) {
        double w = p.bias ? in.bias[gt] : 0.0;
        for (int64_t r = 0; r < R; ++r) w += in.S[gt * R + r] * in.z[(b * R + r) * P + o];
        W[(b * G * T + gt) * P + o] = w;
      }
  Reference ref{std::vector<double>(B * C * P, 0.0), std::vector<double>(B * C * Q, 0.0),
                std::vector<double>(B * R * P, 0.0), std::vector<double>(G * T * R, 0.0),
                std::vector<double>(p.bias ? G * T : 0, 0.0)};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t o0 = 0; o0 < g.out[0]; ++o0)
        for (int64_t o1 = 0; o1 < g.out[1]; ++o1)
          for (int64_t o2 = 0; o2 < g.out[2]; ++o2)
            for (int64_t t0 = 0; t0 < g.kernel[0]; ++t0)
              for (int64_t t1 = 0; t1 < g.kernel[1]; ++t1)
                for (int64_t t2 = 0; t2 < g.kernel[2]; ++t2) {
                  const int64_t i0 = o0 * g.stride[0] - g.padding[0] + t0 * g.dilation[0];
                  const int64_t i1 = o1 * g.stride[1] - g.padding[1] + t1 * g.dilation[1];
                  const int64_t i2 = o2 * g.stride[2] - g.padding[2] + t2 * g.dilation[2];
                  if (i0 < 0 || i0 >= g.in[0] || i1 < 0 || i1 >= g.in[1] || i2 < 0 || i2 >= g.in[2])
                    continue;
                  const int64_t o = (o0 * g.out[1] + o1) * g.out[2] + o2;
                  const int64_t t = (t0 * g.kernel[1] + t1) * g.kernel[2] + t2;
                  const int64_t xi = (b * C + c) * Q + (i0 * g.in[1] + i1) * g.in[2] + i2;
                  const int64_t wi = ((b * G + c / cpg) * T + t) * P + o;
                  const int64_t yi = (b * C + c) * P + o;
                  ref.y[yi] += W[wi] * in.x[xi];
                  ref.gx[xi] += W[wi] * in.gy[yi];
                  gW[wi] += in.gy[yi] * in.x[xi];
                }
  for (int64_t b = 0; b < B; ++b)
    for (int64_t gt = 0; gt < G * T; ++gt)
      for (int64_t o = 0; o < P; ++o) {
        const double dw = gW[(b * G * T + gt) * P + o];
        for (int64_t r = 0; r < R; ++r) {
          ref.gz[(b * R + r) * P + o] += in.S[gt * R + r] * dw;
          ref.gS[gt * R + r] += dw * in.z[(b * R + r) * P + o];
        }
        if (p.bias) ref.gb[gt] += dw;
      }
  return ref;
}

int failures = 0, checks = 0;

template <typename T>
void compare(const std::string& what, const std::vector<T>& got, const std::vector<double>& want,
             double tol) {
  ++checks;
  double worst = 0, scale = 1;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= worst)) worst = d;  // NaN-propagating: an unwritten element fails
  }
  if (!(worst <= tol * scale)) {
    std::printf("%s: max difference %g (scale %g)\n", what.c_str(), worst, scale);
    ++failures;
  }
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

std::string describe(const Problem& p) {
  const Geometry& g = p.g;
  char s[320];
  std::snprintf(s, sizeof s,
                "B%lld C%lld G%lld R%lld%s in %lldx%lldx%lld k %lldx%lldx%lld s %lld,%lld,%lld "
                "p %lld,%lld,%lld d %lld,%lld,%lld",
                (long long)g.batch, (long long)g.channels, (long long)g.groups, (long long)p.R,
                p.bias ? " bias" : "", (long long)g.in[0], (long long)g.in[1], (long long)g.in[2],
                (long long)g.kernel[0], (long long)g.kernel[1], (long long)g.kernel[2],
                (long long)g.stride[0], (long long)g.stride[1], (long long)g.stride[2],
                (long long)g.padding[0], (long long)g.padding[1], (long long)g.padding[2],
                (long long)g.dilation[0], (long long)g.dilation[1], (long long)g.dilation[2]);
  return s;
}

// A grid of at most `cap` blocks along each axis of `full` (the launch's grid).
dim3 shrink(dim3 full, unsigned cap) {
  return dim3(std::min(full.x, cap), std::min(full.y, cap), std::min(full.z, cap));
}

// Calls f(std::integral_constant<int, KT>()) for every tap chunk of fused.cuh.
template <typename F>
void for_each_tap_chunk(const F& f) {
  f(std::integral_constant<int, 9>());
  f(std::integral_constant<int, 27>());
  f(std::integral_constant<int, 49>());
}

int kt_runs[3] = {0, 0, 0};    // forward runs with T <= KT for KT = 9, 27, 49
int chunked_runs[2] = {0, 0};  // forward runs with T > KT: partials in y, in a buffer
int split_modes[2] = {0, 0};   // span splits of whole samples, of parts of a sample
int many_taps = 0, multi_tile = 0, multi_r_chunks = 0, zero_r = 0, zero_batch = 0, with_bias = 0,
    three_d = 0;

// The span weight and bias gradients through the two kernels, with the given splits and grid.
template <typename T>
void run_span(const Problem& p, const FusedDims& d, const SpanSplits& splits, unsigned cap,
              bool want_gS, bool want_gb, const std::vector<T>& gy, const std::vector<T>& x,
              const std::vector<T>& z, std::vector<T>& gS, std::vector<T>& gb) {
  const T nan = static_cast<T>(NAN);
  const int32_t col0 = want_gS ? 0 : d.reduced;
  const int32_t columns = d.reduced + (want_gb ? 1 : 0) - col0;
  const int32_t nrows = d.groups * d.taps;
  std::vector<T> partial(static_cast<size_t>(splits.count) * nrows * columns, nan);
  gS.assign(rows(p) * p.R, nan);
  gb.assign(p.bias ? rows(p) : 0, nan);
  if (columns == 0) return;
  run_blocks("fused_backward_span_partials", shrink(fused_span_grid(d, splits, columns), cap),
             dim3(kThreads), [&] {
               fused_backward_span_partials<T, T>(d, splits, col0, columns, gy.data(), x.data(),
                                                  z.data(), partial.data());
             });
  const int64_t elements = int64_t(nrows) * columns;
  run_blocks(
      "fused_reduce_partials",
      dim3(std::min<unsigned>(2, fused_grid_size((elements + kThreads - 1) / kThreads, 1 << 20))),
      dim3(kThreads), [&] {
        fused_reduce_partials<T, T>(nrows, d.reduced, col0, columns, splits.count, partial.data(),
                                    want_gS ? gS.data() : nullptr, want_gb ? gb.data() : nullptr);
      });
}

template <typename T>
void check_case(const Problem& p, const Data& in, const Reference& ref, std::mt19937& rng,
                double tol, int case_index) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const Geometry& g = p.g;
  const std::string name = "case " + std::to_string(case_index) + " (" + describe(p) +
                           (sizeof(T) == 8 ? ", float64)" : ", float32)");
  if (!fused_kernels_apply(g, p.R)) {
    std::printf("%s: fused_kernels_apply refused a small geometry\n", name.c_str());
    ++failures;
    return;
  }
  const FusedDims d = fused_dims(g, p.R);
  const auto x = cast<T>(in.x), z = cast<T>(in.z), gy = cast<T>(in.gy);
  const auto S = cast<T>(in.S), bias = cast<T>(in.bias);
  const T* bias_p = p.bias ? bias.data() : nullptr;
  const T nan = static_cast<T>(NAN);
  const unsigned cap = static_cast<unsigned>(pick(1, 2));

  // Forward and input gradient: every tap chunk, a random number of groups per block (the
  // launch's choice on every other case).
  const int32_t gpb_f =
      case_index % 2 ? fused_groups_per_block(g.batch, d.out_volume, d.groups) : pick(1, d.groups);
  const int32_t gpb_b =
      case_index % 2 ? fused_groups_per_block(g.batch, d.in_volume, d.groups) : pick(1, d.groups);
  for_each_tap_chunk([&](auto kt) {
    constexpr int KT = decltype(kt)::value;
    const std::string tag = "<KT " + std::to_string(KT) + "> " + name;
    std::vector<T> y(ref.y.size(), nan), gx(ref.gx.size(), nan);
    // The partial sums between tap chunks: none with one chunk (the kernel must not touch
    // them), else the output itself (as for float and double) or a separate buffer (as for
    // the half types), in turn.
    const bool chunked = d.taps > KT, separate = case_index % 3 == 1;
    std::vector<T> y_partial(chunked && separate ? y.size() : 0, nan);
    std::vector<T> gx_partial(chunked && separate ? gx.size() : 0, nan);
    T* y_buf = !chunked ? nullptr : (separate ? y_partial.data() : y.data());
    T* gx_buf = !chunked ? nullptr : (separate ? gx_partial.data() : gx.data());
    run_blocks(
        "fused_forward", shrink(fused_tile_grid(g.batch, d.out_volume, d.groups, gpb_f), cap),
        dim3(kThreads), [&] {
          fused_forward<T, T, KT>(d, gpb_f, x.data(), z.data(), S.data(), bias_p, y.data(), y_buf);
        });
    compare("fused_forward" + tag, y, ref.y, tol);
    run_blocks("fused_backward_input",
               shrink(fused_tile_grid(g.batch, d.in_volume, d.groups, gpb_b), cap), dim3(kThreads),
               [&] {
                 fused_backward_input<T, T, KT>(d, gpb_b, gy.data(), z.data(), S.data(), bias_p,
                                                gx.data(), gx_buf);
               });
    compare("fused_backward_input" + tag, gx, ref.gx, tol);
    if (chunked) {
      ++chunked_runs[separate];
    } else {
      ++kt_runs[KT == 9 ? 0 : (KT == 27 ? 1 : 2)];
    }
  });

  std::vector<T> gz(ref.gz.size(), nan);
  run_blocks("fused_backward_reduced",
             shrink(dim3(fused_grid_size(fused_ceil_div(d.out_volume, kFusedTile), 65535),
                         fused_grid_size(g.batch, 65535)),
                    cap),
             dim3(kThreads),
             [&] { fused_backward_reduced<T, T>(d, gy.data(), x.data(), S.data(), gz.data()); });
  compare("fused_backward_reduced " + name, gz, ref.gz, tol);

  // The span gradients: both, the weight's only, the bias's only (as the masks ask).
  const int64_t partial_row = rows(p) * (p.R + (p.bias ? 1 : 0));
  const int64_t max_splits = std::vector<int64_t>{1, 2, 3, 5, kSpanMaxSplits}[pick(0, 4)];
  const SpanSplits splits = fused_span_splits(g.batch, d.out_volume, partial_row, max_splits);
  if (splits.count > 0) ++split_modes[splits.parts == 1 ? 0 : 1];
  std::vector<T> gS, gb;
  run_span(p, d, splits, cap, true, p.bias, gy, x, z, gS, gb);
  compare("span gradient (weight) " + name, gS, ref.gS, tol);
  if (p.bias) compare("span gradient (bias) " + name, gb, ref.gb, tol);
  // The same splits on another grid: the same bits.
  std::vector<T> gS2, gb2;
  run_span(p, d, splits, 3 - cap, true, p.bias, gy, x, z, gS2, gb2);
  ++checks;
  auto same_bits = [](const std::vector<T>& a, const std::vector<T>& b) {
    return a.size() == b.size() &&
           (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
  };
  if (!same_bits(gS, gS2) || !same_bits(gb, gb2)) {
    std::printf("span gradient %s: another grid gave other bits\n", name.c_str());
    ++failures;
  }
  // Other splits (the launch's default count), one gradient at a time.
  const SpanSplits other = fused_span_splits(g.batch, d.out_volume, partial_row);
  if (other.count > 0) ++split_modes[other.parts == 1 ? 0 : 1];
  run_span(p, d, other, cap, true, false, gy, x, z, gS, gb);
  compare("span gradient (weight only) " + name, gS, ref.gS, tol);
  if (p.bias) {
    run_span(p, d, other, cap, false, true, gy, x, z, gS, gb);
    compare("span gradient (bias only) " + name, gb, ref.gb, tol);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 120;
  std::mt19937 rng(4321);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::normal_distribution<double> normal;
  for (int i = 0; i < cases; ++i) {
    Problem p;
    Geometry& g = p.g;
    const bool is_3d = i % 4 == 3;
    g.batch = i % 23 == 5 ? 0 : pick(1, 3);
    g.groups = pick(1, 4);
    const int cpg = i % 5 == 0 ? pick(9, 20) : (i % 5 == 1 ? 8 : pick(1, 7));
    g.channels = g.groups * cpg;
    p.R = i % 13 == 4 ? 0 : (i % 3 == 0 ? pick(33, 70) : pick(1, 31));
    p.bias = pick(0, 1);
    for (int a = is_3d ? 0 : 1; a < 3; ++a) {
      if (!is_3d && i % 6 == 2) {
        g.kernel[a] = 7 + pick(0, 1) * (a == 1);  // 7x7 (one chunk of 49) or 8x7 (two)
        g.dilation[a] = 1;
        g.stride[a] = pick(1, 2);
        g.padding[a] = pick(0, 4);
        g.in[a] = pick(6, 14);
      } else {
        g.kernel[a] = pick(1, 4);
        g.stride[a] = pick(1, 3);
        g.dilation[a] = pick(1, 2);
        g.padding[a] = pick(0, g.kernel[a]);
        g.in[a] = pick(1, is_3d ? 6 : (i % 7 == 0 ? 30 : 16));
      }
      const int64_t extent = (g.kernel[a] - 1) * g.dilation[a] + 1;
      if (g.in[a] + 2 * g.padding[a] < extent) g.in[a] = extent - 2 * g.padding[a];
      g.out[a] = (g.in[a] + 2 * g.padding[a] - extent) / g.stride[a] + 1;
    }
    Data in;
    const int64_t T = g.taps(), G = g.groups, R = p.R;
    in.x.resize(g.batch * g.channels * g.in_volume());
    in.z.resize(g.batch * R * g.out_volume());
    in.gy.resize(g.batch * g.channels * g.out_volume());
    in.S.resize(G * T * R);
    in.bias.resize(p.bias ? G * T : 0);
    for (auto* v : {&in.x, &in.z, &in.gy, &in.bias})
      for (auto& e : *v) e = normal(rng);
    for (auto& e : in.S) e = normal(rng) / std::sqrt(static_cast<double>(R));
    const Reference ref = reference(p, in);
    many_taps += T > 49;
    multi_tile += g.out_volume() > kFusedTile && g.batch > 0;
    multi_r_chunks += R > 32;
    zero_r += R == 0;
    zero_batch += g.batch == 0;
    with_bias += p.bias;
    three_d += is_3d;
    check_case<double>(p, in, ref, rng, 1e-12, i);
    check_case<float>(p, in, ref, rng, 2e-5, i);
  }
  std::printf(
      "%d fused cases (float64 and float32), %d comparisons: forward/input gradient with T <= "
      "KT for KT 9: %d, 27: %d, 49: %d, chunked (T > KT): %d with partial sums in the output, %d "
      "in a buffer; span splits of whole samples %d, "
      "of parts of samples %d; T > 49: %d, more than one tile: %d, R > 32: %d, R = 0: %d, batch 0: "
      "%d, bias: %d, 3-D: %d\n",
      cases, checks, kt_runs[0], kt_runs[1], kt_runs[2], chunked_runs[0], chunked_runs[1],
      split_modes[0], split_modes[1], many_taps, multi_tile, multi_r_chunks, zero_r, zero_batch,
      with_bias, three_d);
  bool all = chunked_runs[0] > 0 && chunked_runs[1] > 0 && split_modes[0] > 0 &&
             split_modes[1] > 0 && many_taps > 0 && multi_tile > 0 && multi_r_chunks > 0 &&
             zero_r > 0 && zero_batch > 0 && with_bias > 0 && three_d > 0;
  for (int n : kt_runs) all = all && n > 0;
  if (!all) std::printf("not every specialisation and path was exercised\n");
  std::printf("%d failures\n", failures);
  return failures == 0 && all ? 0 : 1;
}
