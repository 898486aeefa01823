#include "involution_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <string>

#include <ATen/Version.h>

#include "../checks.h"
#include "kernel_table.h"

namespace involution {
namespace cpu {

namespace {

// Runs kernel(begin, end) over `tasks` rows in parallel, each row costing about `row_work`
// multiply-adds; chunks are large enough to amortise the thread hand-off.
template <typename F>
void parallel_rows(int64_t tasks, int64_t row_work, const F& kernel) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_work));
  at::parallel_for(0, tasks, grain, kernel);
}

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

at::Tensor empty_like_sizes(const std::vector<c10::SymInt>& sizes, const at::Tensor& like) {
  return at::empty(C10_AS_INTARRAYREF_SLOW(sizes), like.options());
}

}  // namespace

at::Tensor forward(const char* op, int64_t dims, const at::Tensor& input, const at::Tensor& weight,
                   at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto sizes = detail::check_forward(op, dims, input, weight, stride, padding, dilation);
  at::Tensor output = empty_like_sizes(sizes, input);
  if (output.numel() == 0) return output;

  const at::Tensor x = input.contiguous();
  const at::Tensor w = weight.contiguous();
  const Geometry g = detail::make_geometry(dims, x.sizes(), w.sizes(), stride, padding, dilation);
  const int64_t tasks = output_row_tasks(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "involution_forward_cpu", [&] {
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
    scalar_t* y_ptr = output.mutable_data_ptr<scalar_t>();
    parallel_rows(tasks, kRowsPerTask * g.channels_per_group() * g.taps() * g.out[2],
                  [&](int64_t begin, int64_t end) {
                    kernels().get<scalar_t>().forward(g, x_ptr, w_ptr, y_ptr, begin, end);
                  });
  });
  return output;
}

at::Tensor backward_input(const char* op, int64_t dims, const at::Tensor& grad_output,
                          const at::Tensor& weight, c10::SymIntArrayRef input_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  const auto sizes = detail::check_backward_input(op, dims, grad_output, weight, input_size,
                                                  stride, padding, dilation);
  at::Tensor grad_input = empty_like_sizes(sizes, grad_output);
  if (grad_input.numel() == 0) return grad_input;
  if (grad_output.numel() == 0) return grad_input.zero_();

  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  const Geometry g =
      detail::make_geometry(dims, grad_input.sizes(), w.sizes(), stride, padding, dilation);
  const int64_t tasks = input_row_tasks(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "involution_backward_input_cpu", [&] {
    const scalar_t* gy_ptr = gy.const_data_ptr<scalar_t>();
    const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
    scalar_t* gx_ptr = grad_input.mutable_data_ptr<scalar_t>();
    parallel_rows(tasks, kRowsPerTask * g.channels_per_group() * g.taps() * g.in[2],
                  [&](int64_t begin, int64_t end) {
                    kernels().get<scalar_t>().backward_input(g, gy_ptr, w_ptr, gx_ptr, begin, end);
                  });
  });
  return grad_input;
}

at::Tensor backward_weight(const char* op, int64_t dims, const at::Tensor& grad_output,
                           const at::Tensor& input, at::IntArrayRef kernel_size, int64_t groups,
                           at::IntArrayRef stride, at::IntArrayRef padding,
                           at::IntArrayRef dilation) {
  const auto sizes = detail::check_backward_weight(op, dims, grad_output, input, kernel_size,
                                                   groups, stride, padding, dilation);
  at::Tensor grad_weight = empty_like_sizes(sizes, grad_output);
  if (grad_weight.numel() == 0) return grad_weight;
  if (grad_output.numel() == 0) return grad_weight.zero_();

  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor x = input.contiguous();
  const Geometry g =
      detail::make_geometry(dims, x.sizes(), grad_weight.sizes(), stride, padding, dilation);
  const int64_t tasks = output_row_tasks(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "involution_backward_weight_cpu", [&] {
    const scalar_t* gy_ptr = gy.const_data_ptr<scalar_t>();
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* gw_ptr = grad_weight.mutable_data_ptr<scalar_t>();
    parallel_rows(tasks, kRowsPerTask * g.channels_per_group() * g.taps() * g.out[2],
                  [&](int64_t begin, int64_t end) {
                    kernels().get<scalar_t>().backward_weight(g, gy_ptr, x_ptr, gw_ptr, begin, end);
                  });
  });
  return grad_weight;
}

}  // namespace cpu
}  // namespace involution
