// Runs the CUDA kernels of csrc/ops/cuda/involution_kernels.cuh on the host, one emulated thread
// after another, against a loop reference on random geometries (2-D and 3-D, strides,
// dilations, paddings, uneven kernels, groups with fewer and more channels than a register
// block). The kernels use no shared memory, no synchronisation and no atomics, and each thread
// writes only its own outputs, so running the threads in sequence computes exactly what the GPU
// computes; this checks their index arithmetic on machines without a GPU. A deliberately small
// grid makes every thread take several grid-stride steps.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

// What nvcc would provide.
#define __global__
#define __device__
#define __host__
#define __restrict__
#define __launch_bounds__(n)
struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};
static Dim3 blockIdx, blockDim, threadIdx, gridDim;

#include "../../csrc/ops/cuda/involution_kernels.cuh"

namespace {

using involution::Geometry;
using namespace involution::cuda;

template <typename Kernel>
void launch(int64_t total, const Kernel& kernel) {
  gridDim.x = 3;  // far fewer threads than elements: exercises the grid-stride loop
  blockDim.x = 37;
  for (unsigned b = 0; b < gridDim.x; ++b) {
    for (unsigned t = 0; t < blockDim.x; ++t) {
      blockIdx.x = b;
      threadIdx.x = t;
      kernel(total);
    }
  }
}

struct Reference {
  std::vector<double> y, gx, gw;
};

// y, and the gradients of sum(y * gy), by the definition.
Reference reference(const Geometry& g, const std::vector<double>& x, const std::vector<double>& w,
                    const std::vector<double>& gy) {
  const int64_t in_v = g.in[0] * g.in[1] * g.in[2], out_v = g.out[0] * g.out[1] * g.out[2];
  const int64_t taps = g.kernel[0] * g.kernel[1] * g.kernel[2], cpg = g.channels / g.groups;
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
                  if (i0 < 0 || i0 >= g.in[0] || i1 < 0 || i1 >= g.in[1] || i2 < 0 ||
                      i2 >= g.in[2])
                    continue;
                  const int64_t o = (o0 * g.out[1] + o1) * g.out[2] + o2;
                  const int64_t k = (t0 * g.kernel[1] + t1) * g.kernel[2] + t2;
                  const int64_t xi = (b * g.channels + c) * in_v + (i0 * g.in[1] + i1) * g.in[2] + i2;
                  const int64_t wi = ((b * g.groups + c / cpg) * taps + k) * out_v + o;
                  const int64_t yi = (b * g.channels + c) * out_v + o;
                  r.y[yi] += w[wi] * x[xi];
                  r.gx[xi] += w[wi] * gy[yi];
                  r.gw[wi] += gy[yi] * x[xi];
                }
  return r;
}

int failures = 0;

template <typename T>
void compare(const char* what, const std::vector<T>& got, const std::vector<double>& want,
             double tol, int case_index) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(d <= worst)) worst = d;  // NaN-propagating
  }
  if (!(worst <= tol)) {
    std::printf("case %d: %s max difference %g\n", case_index, what, worst);
    ++failures;
  }
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
void check_case(const Geometry& g, std::mt19937& rng, double tol, int case_index) {
  std::normal_distribution<double> normal;
  const int64_t in_v = g.in[0] * g.in[1] * g.in[2], out_v = g.out[0] * g.out[1] * g.out[2];
  const int64_t taps = g.kernel[0] * g.kernel[1] * g.kernel[2];
  std::vector<double> x(g.batch * g.channels * in_v), w(g.batch * g.groups * taps * out_v),
      gy(g.batch * g.channels * out_v);
  for (auto* v : {&x, &w, &gy})
    for (auto& e : *v) e = normal(rng);
  const Reference r = reference(g, x, w, gy);
  const auto xt = cast<T>(x), wt = cast<T>(w), gyt = cast<T>(gy);
  const T nan = static_cast<T>(NAN);  // outputs start as NaN: every element must be written

  std::vector<T> y(r.y.size(), nan), y_naive(r.y.size(), nan), gx(x.size(), nan),
      gw(w.size(), nan), gw_streamed(w.size(), nan);
  const int64_t per_pixel = g.batch * g.groups * out_v;
  launch(per_pixel, [&](int64_t n) { forward_kernel<T, T>(g, xt.data(), wt.data(), y.data(), n); });
  launch(g.batch * g.channels * out_v,
         [&](int64_t n) { naive_forward_kernel<T, T>(g, xt.data(), wt.data(), y_naive.data(), n); });
  launch(g.batch * g.groups * in_v,
         [&](int64_t n) { backward_input_kernel<T, T>(g, gyt.data(), wt.data(), gx.data(), n); });
  if (g.channels / g.groups <= kChannelBlock) {
    launch(per_pixel, [&](int64_t n) {
      backward_weight_kernel<T, T, true>(g, gyt.data(), xt.data(), gw.data(), n);
    });
    compare("backward_weight (resident)", gw, r.gw, tol, case_index);
  }
  launch(per_pixel, [&](int64_t n) {
    backward_weight_kernel<T, T, false>(g, gyt.data(), xt.data(), gw_streamed.data(), n);
  });
  compare("forward", y, r.y, tol, case_index);
  compare("naive forward", y_naive, r.y, tol, case_index);
  compare("backward_input", gx, r.gx, tol, case_index);
  compare("backward_weight (streamed)", gw_streamed, r.gw, tol, case_index);
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int cases = 300;
  for (int i = 0; i < cases; ++i) {
    Geometry g;
    const bool three_d = i % 2 == 1;
    g.batch = pick(1, 2);
    g.groups = pick(1, 3);
    // 1..40 channels per group: below, at and above the 16-channel register block.
    const int cpg = i % 5 == 0 ? pick(17, 40) : (i % 5 == 1 ? 16 : pick(1, 15));
    g.channels = g.groups * cpg;
    for (int a = three_d ? 0 : 1; a < 3; ++a) {
      g.kernel[a] = pick(1, 4);
      g.stride[a] = pick(1, 3);
      g.dilation[a] = pick(1, 2);
      g.padding[a] = pick(0, g.kernel[a]);
      g.in[a] = pick(1, three_d ? 6 : 11);
      const int64_t extent = (g.kernel[a] - 1) * g.dilation[a] + 1;
      if (g.in[a] + 2 * g.padding[a] < extent) g.in[a] = extent;  // output size >= 1
      g.out[a] = (g.in[a] + 2 * g.padding[a] - extent) / g.stride[a] + 1;
    }
    check_case<double>(g, rng, 1e-11, i);
    check_case<float>(g, rng, 1e-3, i);
  }
  std::printf("%d cases (float64 and float32), %d failures\n", cases, failures);
  return failures == 0 ? 0 : 1;
}
