#include "involution_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>

#include "../checks.h"
#include "involution_kernels.h"

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
  const int64_t tasks = g.batch * g.groups * g.out[0] * g.out[1];
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "involution_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
    scalar_t* y_ptr = output.mutable_data_ptr<scalar_t>();
    parallel_rows(tasks, g.channels_per_group() * g.taps() * g.out[2],
                  [&](int64_t begin, int64_t end) {
                    cpu::forward<scalar_t, acc_t>(g, x_ptr, w_ptr, y_ptr, begin, end);
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
  const int64_t tasks = g.batch * g.groups * g.in[0] * g.in[1];
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "involution_backward_input_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gy_ptr = gy.const_data_ptr<scalar_t>();
    const scalar_t* w_ptr = w.const_data_ptr<scalar_t>();
    scalar_t* gx_ptr = grad_input.mutable_data_ptr<scalar_t>();
    parallel_rows(tasks, g.channels_per_group() * g.taps() * g.in[2],
                  [&](int64_t begin, int64_t end) {
                    cpu::backward_input<scalar_t, acc_t>(g, gy_ptr, w_ptr, gx_ptr, begin, end);
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
  const int64_t tasks = g.batch * g.groups * g.out[0] * g.out[1];
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gy.scalar_type(), "involution_backward_weight_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gy_ptr = gy.const_data_ptr<scalar_t>();
    const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
    scalar_t* gw_ptr = grad_weight.mutable_data_ptr<scalar_t>();
    parallel_rows(tasks, g.channels_per_group() * g.taps() * g.out[2],
                  [&](int64_t begin, int64_t end) {
                    cpu::backward_weight<scalar_t, acc_t>(g, gy_ptr, x_ptr, gw_ptr, begin, end);
                  });
  });
  return grad_weight;
}

}  // namespace cpu
}  // namespace involution
