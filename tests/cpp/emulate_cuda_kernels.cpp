// Runs every CUDA kernel of csrc/ops/cuda/ on the host, one emulated thread after another,
// against a loop reference on random geometries: 2-D and 3-D, every specialisation of the
// tiled kernels (K = 3 and 7, stride 1 and 2, input loaded in pairs or not) and the generic
// kernels on any geometry (strides, dilations, paddings, uneven kernels), groups with fewer,
// exactly and more channels than a register block, float64 and float32.
//
// Each kernel runs under emulate_block.h's block runner, as it would be launched: the threads of
// a block as fibers that all reach each block_barrier() before any passes it, and shared memory
// (csrc/ops/cuda/block_sync.cuh) checked element by element: every read must see a value
// written before the last barrier (or by the reading thread itself), no two threads may touch
// an element between two barriers unless both only read, and every thread must reach every
// barrier (emulate_block_selftest.cpp shows that broken kernels are reported). A kernel without
// shared memory, whose threads each write only their own outputs (no atomics), runs thread after
// thread and computes exactly what the GPU computes. Outputs start as NaN (every element must be
// written), the grid is far smaller than the problem (every thread takes several grid-stride
// steps), the slabs are split over several launches (as for_each_slab_range does for large
// problems), and every pair load checks the alignment the GPU needs. CI builds this under
// AddressSanitizer and UndefinedBehaviorSanitizer (make emulate), so any out-of-bounds read or
// write fails it.

// clang-format off
#include "emulate_block.h"  // before the kernels: what nvcc would provide, the block runner
// clang-format on

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/ops/cuda/backward_input.cuh"
#include "../../csrc/ops/cuda/backward_weight.cuh"
#include "../../csrc/ops/cuda/forward.cuh"

namespace {

using involution::Geometry;
using namespace involution::cuda;

// Runs kernel() as every thread of a small grid: 3 x `rows` blocks of 37 threads, far fewer
// than the work items, so every thread takes several grid-stride steps (the generic kernels
// stride over slabs along y; the tiled ones use x only).
template <typename Kernel>
void run_grid(const char* name, const Kernel& kernel, unsigned rows = 2) {
  involution::emulation::run_blocks(name, dim3(3, rows), dim3(37), kernel);
}

// A tiled kernel over all slabs, in several launches of at most `per_launch` slabs each.
template <typename Kernel>
void run_tiled(const char* name, const Geometry& g, int64_t per_launch, const Kernel& kernel) {
  const int64_t slabs = g.batch * g.groups;
  for (int64_t s = 0; s < slabs; s += per_launch) {
    const auto n = static_cast<int32_t>(std::min(per_launch, slabs - s));
    run_grid(name, [&] { kernel(s, n); }, 1);
  }
}

struct Reference {
  std::vector<double> y, gx, gw;
};

// y, and the gradients of sum(y * gy), by the definition (zero-padded input).
Reference reference(const Geometry& g, const std::vector<double>& x, const std::vector<double>& w,
                    const std::vector<double>& gy) {
  const int64_t in_v = g.in_volume(), out_v = g.out_volume(), taps = g.taps();
  const int64_t cpg = g.channels / g.groups;
  Reference r{std::vector<double>(g.batch * g.channels * out_v), std::vector<double>(x.size()),
              std::vector<double>(w.size())};
  for (int64_t b = 0; b < g.batch; ++b)
    for (int64_t c = 0; c < g.channels; ++c)
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
                  const int64_t k = (t0 * g.kernel[1] + t1) * g.kernel[2] + t2;
                  const int64_t xi =
                      (b * g.channels + c) * in_v + (i0 * g.in[1] + i1) * g.in[2] + i2;
                  const int64_t wi = ((b * g.groups + c / cpg) * taps + k) * out_v + o;
                  const int64_t yi = (b * g.channels + c) * out_v + o;
                  r.y[yi] += w[wi] * x[xi];
                  r.gx[xi] += w[wi] * gy[yi];
                  r.gw[wi] += gy[yi] * x[xi];
                }
  return r;
}

int failures = 0, checks = 0;

template <typename T>
void compare(const std::string& what, const std::vector<T>& got, const std::vector<double>& want,
             double tol, int case_index) {
  ++checks;
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= worst)) worst = d;  // NaN-propagating: an unwritten element fails
  }
  if (!(worst <= tol)) {
    std::printf("case %d: %s max difference %g\n", case_index, what.c_str(), worst);
    ++failures;
  }
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

std::string describe(const Geometry& g) {
  char s[256];
  std::snprintf(s, sizeof s,
                "B%lld C%lld G%lld in %lldx%lldx%lld k %lldx%lldx%lld s %lld,%lld,%lld",
                (long long)g.batch, (long long)g.channels, (long long)g.groups, (long long)g.in[0],
                (long long)g.in[1], (long long)g.in[2], (long long)g.kernel[0],
                (long long)g.kernel[1], (long long)g.kernel[2], (long long)g.stride[0],
                (long long)g.stride[1], (long long)g.stride[2]);
  return s;
}

template <typename T>
void check_case(const Geometry& g, std::mt19937& rng, double tol, int case_index,
                int tiled_variants[5]) {
  std::normal_distribution<double> normal;
  std::vector<double> x(g.batch * g.channels * g.in_volume()),
      w(g.batch * g.groups * g.taps() * g.out_volume()), gy(g.batch * g.channels * g.out_volume());
  for (auto* v : {&x, &w, &gy})
    for (auto& e : *v) e = normal(rng);
  const Reference r = reference(g, x, w, gy);
  const auto xt = cast<T>(x), wt = cast<T>(w), gyt = cast<T>(gy);
  const T nan = static_cast<T>(NAN);
  const std::string name = describe(g) + (sizeof(T) == 8 ? " float64" : " float32");

  std::vector<T> y(r.y.size(), nan), gx(x.size(), nan), gw(w.size(), nan);
  if (!cuda_kernels_apply(g)) {
    std::printf("case %d: cuda_kernels_apply refused a small geometry\n", case_index);
    ++failures;
    return;
  }
  run_grid("forward_generic", [&] { forward_generic<T, T>(g, xt.data(), wt.data(), y.data()); });
  compare("forward_generic " + name, y, r.y, tol, case_index);
  run_grid("backward_input_generic",
           [&] { backward_input_generic<T, T>(g, gyt.data(), wt.data(), gx.data()); });
  compare("backward_input_generic " + name, gx, r.gx, tol, case_index);
  run_grid("backward_weight_generic",
           [&] { backward_weight_generic<T, T>(g, gyt.data(), xt.data(), gw.data()); });
  compare("backward_weight_generic " + name, gw, r.gw, tol, case_index);
  if (!tiled_kernels_apply(g)) return;

  const int64_t per_launch = 1 + case_index % 2;  // one or two slabs per launch
  with_tiled_shape(g, [&](auto k, auto s) {
    constexpr int K = decltype(k)::value, S = decltype(s)::value;
    for (const int variant : {0, 1, 2, 3}) {
      const bool pairs = variant & 1, vector = variant & 2;
      if (pairs && !forward_pairs_apply(g, xt.data())) continue;
      if (vector && !forward_vector_weights_apply(g, wt.data())) continue;
      std::fill(y.begin(), y.end(), nan);
      run_tiled("forward_tiled", g, per_launch, [&](int64_t slab0, int32_t slabs) {
        const auto kernel = pairs ? (vector ? forward_tiled<T, T, K, S, true, true>
                                            : forward_tiled<T, T, K, S, true, false>)
                                  : (vector ? forward_tiled<T, T, K, S, false, true>
                                            : forward_tiled<T, T, K, S, false, false>);
        kernel(g, xt.data(), wt.data(), y.data(), slab0, slabs);
      });
      compare(std::string("forward_tiled<pairs ") + (pairs ? "1" : "0") + ", vector weights " +
                  (vector ? "1" : "0") + "> " + name,
              y, r.y, tol, case_index);
      ++tiled_variants[variant];
    }
    std::fill(gx.begin(), gx.end(), nan);
    run_tiled("backward_input_tiled", g, per_launch, [&](int64_t slab0, int32_t slabs) {
      backward_input_tiled<T, T, K, S>(g, gyt.data(), wt.data(), gx.data(), slab0, slabs);
    });
    compare("backward_input_tiled " + name, gx, r.gx, tol, case_index);
    std::fill(gw.begin(), gw.end(), nan);
    run_tiled("backward_weight_tiled", g, per_launch, [&](int64_t slab0, int32_t slabs) {
      backward_weight_tiled<T, T, K, S>(g, gyt.data(), xt.data(), gw.data(), slab0, slabs);
    });
    compare("backward_weight_tiled " + name, gw, r.gw, tol, case_index);
    ++tiled_variants[4];
  });
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 400;
  std::mt19937 rng(1234);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  // forward without and with pairs, vector weights, both; gradients
  int tiled_variants[5] = {0, 0, 0, 0, 0};
  int tiled_shapes[2][2] = {};  // [stride - 1][K == 7]
  for (int i = 0; i < cases; ++i) {
    Geometry g;
    const bool three_d = i % 4 == 3;
    const bool tiled = i % 3 != 0;  // two cases in three take the tiled kernels' shapes
    g.batch = pick(1, 2);
    g.groups = pick(1, 3);
    // 1..40 channels per group: below, at and above the 16-channel register blocks.
    const int cpg = i % 5 == 0 ? pick(17, 40) : (i % 5 == 1 ? 16 : pick(1, 15));
    g.channels = g.groups * cpg;
    const int k = pick(0, 1) ? 7 : 3, s = pick(1, 2);
    for (int a = three_d ? 0 : 1; a < 3; ++a) {
      if (tiled && a > 0) {
        g.kernel[a] = k;
        g.stride[a] = s;
        g.dilation[a] = 1;
        g.padding[a] = pick(0, k);
        g.in[a] = pick(1, three_d ? 12 : 23);
      } else {
        g.kernel[a] = pick(1, 4);
        g.stride[a] = pick(1, 3);
        g.dilation[a] = pick(1, 2);
        g.padding[a] = pick(0, g.kernel[a]);
        g.in[a] = pick(1, three_d ? 6 : 11);
      }
      const int64_t extent = (g.kernel[a] - 1) * g.dilation[a] + 1;
      if (g.in[a] + 2 * g.padding[a] < extent) g.in[a] = extent - 2 * g.padding[a];
      g.out[a] = (g.in[a] + 2 * g.padding[a] - extent) / g.stride[a] + 1;
    }
    if (tiled) ++tiled_shapes[s - 1][k == 7];
    check_case<double>(g, rng, 1e-11, i, tiled_variants);
    check_case<float>(g, rng, 2e-4, i, tiled_variants);
  }
  std::printf(
      "%d cases (float64 and float32), %d comparisons: tiled forward %d (plain), %d "
      "(pairs), %d (vector weights), %d (both), tiled gradients %d; tiled shapes K3/S1 "
      "%d, K7/S1 %d, K3/S2 %d, K7/S2 %d\n",
      cases, checks, tiled_variants[0], tiled_variants[1], tiled_variants[2], tiled_variants[3],
      tiled_variants[4], tiled_shapes[0][0], tiled_shapes[0][1], tiled_shapes[1][0],
      tiled_shapes[1][1]);
  // Every specialisation must have been exercised.
  bool all = true;
  for (int n : tiled_variants) all = all && n > 0;
  for (auto& row : tiled_shapes)
    for (int n : row) all = all && n > 0;
  if (!all) std::printf("not every tiled specialisation was exercised\n");
  std::printf("%d failures\n", failures);
  return failures == 0 && all ? 0 : 1;
}
