// CPU kernels of the involution2d and involution3d ops (one implementation, `Dims` axes): the
// shared checks and preparation (prepare.h), then the row kernels of row_kernels.h, of the best
// instruction set the machine allows (kernel_table.h), run in parallel over tasks of rows.

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>

#include "../dtypes.h"
#include "../op_family.h"
#include "../prepare.h"
#include "direct_kernels.h"
#include "kernel_table.h"

namespace involution {
namespace cpu {

namespace {

// The kernels of the best instruction set that both the machine and ATen's CPU capability
// (which ATEN_CPU_CAPABILITY=default|avx2|avx512 can lower) allow.
const KernelTable& kernels() {
  static const KernelTable* table = [] {
    const KernelTable* t = nullptr;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    const std::string capability = at::get_cpu_capability();
    if (capability == "AVX512" && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq")) {
      t = kernel_table_avx512();
    }
    if (t == nullptr && (capability == "AVX512" || capability == "AVX2") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      t = kernel_table_avx2();
    }
#endif
    return t != nullptr ? t : kernel_table_default();
  }();
  return *table;
}

// out = kernel(a, b) over `tasks` tasks in parallel, with the kernel that `pick` chooses from
// the table of a's dtype. a, b and out are contiguous; a task costs about
// kRowsPerTask * C/G * taps * row_width multiply-adds.
//
// The threads take tasks from a shared counter in chunks that shrink as the work runs out
// (guided self-scheduling): each grab takes 1 / (2 * threads) of the tasks left, and at least
// `grain`. The first, large chunks keep the kernel's per-call setup (its staging buffers) rare;
// the last ones, of a task or a few, let the threads finish together, where equal fixed chunks
// leave one thread idle for up to a chunk at the end. A thread that runs slower (a busy
// neighbour on a shared host, a slower core) simply takes fewer chunks. Which thread runs a task
// does not change its result.
enum class Pass { forward, backward_input, backward_weight };

// Elements the row kernels' staging buffers would take per thread (row_kernels.h: InputSlab for
// forward and backward_weight, the staged grad_output and weight rows of backward_input), for
// the widest SIMD type; in floating point, since for absurd geometries the count itself would
// not fit in an int64.
double staged_elements(const Geometry& g, Pass pass) {
  constexpr double kLanes = 16, kChannelBlock = 8;
  const double cpg = static_cast<double>(g.channels_per_group());
  const double KD = g.kernel[0], KH = g.kernel[1], KW = g.kernel[2];
  const double sh = g.stride[1], dh = g.dilation[1];
  const double s = g.stride[2], p = g.padding[2], d = g.dilation[2];
  auto round_up_d = [&](double n) { return std::ceil(n / kLanes) * kLanes; };
  if (pass != Pass::backward_input) {
    const double phase_len = round_up_d(g.out[2]) + std::floor((KW - 1) * d / s) + 1;
    const double max_rows = (kRowsPerTask - 1) * sh + (KH - 1) * dh + 1;
    return cpg * KD * max_rows * s * phase_len + s * phase_len;
  }
  const double m_padded = round_up_d(std::ceil(g.in[2] / s));
  const double left = std::max(0.0, -std::floor((p - (KW - 1) * d) / s));
  const double len = m_padded + std::floor((s - 1 + p) / s) + left;
  const double max_out_rows = std::floor((kRowsPerTask - 1 + (KH - 1) * dh) / sh) + 1;
  const double phases = std::min<double>(s, g.in[2]);
  return cpg * KD * max_out_rows * len + KD * KH * KW * len + kChannelBlock * phases * m_padded +
         s * m_padded;
}

// Whether a pass runs the direct kernels (direct_kernels.h) instead of the row kernels: when
// the row kernels' buffers would exceed both 2^20 elements (4 MiB in float32) and 4 times the
// (batch, group) slabs of the pass's tensors, i.e. when a stride, padding or dilation far
// larger than the tensors would make the staged rows mostly zeros and gaps. Memory then stays
// bounded by a small multiple of the tensors whatever the geometry.
bool use_direct(const Geometry& g, Pass pass) {
  const double slabs = static_cast<double>(g.channels_per_group()) * g.in_volume() +
                       static_cast<double>(g.taps()) * g.out_volume() +
                       static_cast<double>(g.channels_per_group()) * g.out_volume();
  return staged_elements(g, pass) > std::max(double(1 << 20), 4 * slabs);
}

void run(const Geometry& g, int64_t tasks, int64_t row_width, const at::Tensor& a,
         const at::Tensor& b, const at::Tensor& out, Pass pass) {
  const bool direct_kernels = use_direct(g, pass);
  const int64_t task_work = kRowsPerTask * g.channels_per_group() * g.taps() * row_width;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, task_work));
  const int64_t threads = std::min<int64_t>(
      at::in_parallel_region() ? 1 : at::get_num_threads(), ceil_div(tasks, grain));
  INVOLUTION_DISPATCH_SUPPORTED_TYPES(a.scalar_type(), "involution_cpu", [&] {
    typename Kernels<scalar_t>::Fn kernel = nullptr;
    if (direct_kernels) {
      kernel = pass == Pass::forward          ? &direct::forward<scalar_t>
               : pass == Pass::backward_input ? &direct::backward_input<scalar_t>
                                              : &direct::backward_weight<scalar_t>;
    } else {
      const auto& k = kernels().get<scalar_t>();
      kernel = pass == Pass::forward          ? k.forward
               : pass == Pass::backward_input ? k.backward_input
                                              : k.backward_weight;
    }
    const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
    const scalar_t* b_ptr = b.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    if (threads <= 1) {  // one call, so the kernel sets up its buffers once
      kernel(g, a_ptr, b_ptr, out_ptr, 0, tasks);
      return;
    }
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      int64_t begin = next.load(std::memory_order_relaxed);
      while (begin < tasks) {
        const int64_t left = tasks - begin;
        const int64_t size = std::min(left, std::max(grain, left / (2 * threads)));
        // On failure, begin is reloaded with the counter's current value.
        if (next.compare_exchange_weak(begin, begin + size, std::memory_order_relaxed)) {
          kernel(g, a_ptr, b_ptr, out_ptr, begin, begin + size);
          begin = next.load(std::memory_order_relaxed);
        }
      }
    });
  });
}

using detail::OpFamily;

template <int64_t Dims>
at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = detail::prepare_forward(OpFamily<Dims>::name, Dims, input, weight,
                                         {stride, padding, dilation});
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out, Pass::forward);
  }
  return p.out;
}

template <int64_t Dims>
at::Tensor backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                              c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p =
      detail::prepare_backward_input(OpFamily<Dims>::backward_input_name, Dims, grad_output, weight,
                                     input_size, {stride, padding, dilation});
  if (p.work) {
    run(p.g, input_row_tasks(p.g), p.g.in[2], p.a, p.b, p.out, Pass::backward_input);
  }
  return p.out;
}

template <int64_t Dims>
at::Tensor backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                               at::IntArrayRef kernel_size, int64_t groups, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p =
      detail::prepare_backward_weight(OpFamily<Dims>::backward_weight_name, Dims, grad_output,
                                      input, kernel_size, groups, {stride, padding, dilation});
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out, Pass::backward_weight);
  }
  return p.out;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(involution, CPU, m) {
  m.impl("involution2d", TORCH_FN(cpu::forward_cpu<2>));
  m.impl("_involution2d_backward_input", TORCH_FN(cpu::backward_input_cpu<2>));
  m.impl("_involution2d_backward_weight", TORCH_FN(cpu::backward_weight_cpu<2>));
  m.impl("involution3d", TORCH_FN(cpu::forward_cpu<3>));
  m.impl("_involution3d_backward_input", TORCH_FN(cpu::backward_input_cpu<3>));
  m.impl("_involution3d_backward_weight", TORCH_FN(cpu::backward_weight_cpu<3>));
}

}  // namespace involution
