#include "involution_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <algorithm>
#include <string>

#include "../prepare.h"
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
template <typename Pick>
void run(const Geometry& g, int64_t tasks, int64_t row_width, const at::Tensor& a,
         const at::Tensor& b, const at::Tensor& out, const Pick& pick) {
  const int64_t task_work = kRowsPerTask * g.channels_per_group() * g.taps() * row_width;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, task_work));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "involution_cpu", [&] {
    const auto kernel = pick(kernels().get<scalar_t>());
    const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
    const scalar_t* b_ptr = b.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
      kernel(g, a_ptr, b_ptr, out_ptr, begin, end);
    });
  });
}

}  // namespace

at::Tensor forward(const char* op, int64_t dims, const at::Tensor& input, const at::Tensor& weight,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto p = detail::prepare_forward(op, dims, input, weight, stride, padding, dilation);
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out,
        [](const auto& k) { return k.forward; });
  }
  return p.out;
}

at::Tensor backward_input(const char* op, int64_t dims, const at::Tensor& grad_output,
                          const at::Tensor& weight, c10::SymIntArrayRef input_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  const auto p = detail::prepare_backward_input(op, dims, grad_output, weight, input_size, stride,
                                                padding, dilation);
  if (p.work) {
    run(p.g, input_row_tasks(p.g), p.g.in[2], p.a, p.b, p.out,
        [](const auto& k) { return k.backward_input; });
  }
  return p.out;
}

at::Tensor backward_weight(const char* op, int64_t dims, const at::Tensor& grad_output,
                           const at::Tensor& input, at::IntArrayRef kernel_size, int64_t groups,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  const auto p = detail::prepare_backward_weight(op, dims, grad_output, input, kernel_size, groups,
                                                 stride, padding, dilation);
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out,
        [](const auto& k) { return k.backward_weight; });
  }
  return p.out;
}

}  // namespace cpu
}  // namespace involution
