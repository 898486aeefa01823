// CPU kernels of the involution2d and involution3d ops (one implementation, `Dims` axes): the
// shared checks and preparation (prepare.h), then the row kernels of row_kernels.h, of the best
// instruction set the machine allows (kernel_table.h), run in parallel over tasks of rows.

#include <torch/library.h>

#include "../dtypes.h"
#include "../op_family.h"
#include "../prepare.h"
#include "scheduling.h"

namespace involution {
namespace cpu {

namespace {

void run(const Geometry& g, int64_t tasks, int64_t row_width, const at::Tensor& a,
         const at::Tensor& b, const at::Tensor& out, Pass pass) {
  const int64_t grain = task_grain(g, row_width);
  const int64_t threads = useful_threads(tasks, grain);
  INVOLUTION_DISPATCH_SUPPORTED_TYPES(a.scalar_type(), "involution_cpu", [&] {
    const auto kernel = pick_kernel<scalar_t>(g, pass);
    const scalar_t* a_ptr = a.const_data_ptr<scalar_t>();
    const scalar_t* b_ptr = b.const_data_ptr<scalar_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    run_guided(threads, tasks, grain,
               [&](int64_t begin, int64_t end) { kernel(g, a_ptr, b_ptr, out_ptr, begin, end); });
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
