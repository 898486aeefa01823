// CPU kernels of the involution2d and involution3d ops (one implementation, `Dims` axes): the
// shared checks and preparation (prepare.h), then the row kernels of row_kernels.h, of the best
// instruction set the machine allows (kernel_table.h), run in parallel over tasks of rows.

#include <torch/csrc/stable/library.h>

#include <string>

#include "../dtypes.h"
#include "../op_names.h"
#include "../prepare.h"
#include "scheduling.h"

namespace involution {
namespace cpu {

namespace {

using detail::Tensor;
using IntList = torch::headeronly::IntHeaderOnlyArrayRef;

void run(const Geometry& g, int64_t tasks, int64_t row_width, const Tensor& a, const Tensor& b,
         const Tensor& out, Pass pass) {
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

template <int64_t Dims>
using OpFamily = detail::OpNames<Dims>;

template <int64_t Dims>
Tensor forward_cpu(Tensor input, Tensor weight, IntList stride, IntList padding, IntList dilation) {
  const auto p = detail::prepare_forward(OpFamily<Dims>::name, Dims, input, weight,
                                         {stride, padding, dilation});
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out, Pass::forward);
  }
  return p.out;
}

template <int64_t Dims>
Tensor backward_input_cpu(Tensor grad_output, Tensor weight, IntList input_size, IntList stride,
                          IntList padding, IntList dilation) {
  const auto p =
      detail::prepare_backward_input(OpFamily<Dims>::backward_input_name, Dims, grad_output, weight,
                                     input_size, {stride, padding, dilation});
  if (p.work) {
    run(p.g, input_row_tasks(p.g), p.g.in[2], p.a, p.b, p.out, Pass::backward_input);
  }
  return p.out;
}

template <int64_t Dims>
Tensor backward_weight_cpu(Tensor grad_output, Tensor input, IntList kernel_size, int64_t groups,
                           IntList stride, IntList padding, IntList dilation) {
  const auto p =
      detail::prepare_backward_weight(OpFamily<Dims>::backward_weight_name, Dims, grad_output,
                                      input, kernel_size, groups, {stride, padding, dilation});
  if (p.work) {
    run(p.g, output_row_tasks(p.g), p.g.out[2], p.a, p.b, p.out, Pass::backward_weight);
  }
  return p.out;
}

std::string cpu_capability() { return kernels_capability(); }

}  // namespace
}  // namespace cpu

STABLE_TORCH_LIBRARY_IMPL(involution, CPU, m) {
  m.impl("involution2d", TORCH_BOX(&cpu::forward_cpu<2>));
  m.impl("_involution2d_backward_input", TORCH_BOX(&cpu::backward_input_cpu<2>));
  m.impl("_involution2d_backward_weight", TORCH_BOX(&cpu::backward_weight_cpu<2>));
  m.impl("involution3d", TORCH_BOX(&cpu::forward_cpu<3>));
  m.impl("_involution3d_backward_input", TORCH_BOX(&cpu::backward_input_cpu<3>));
  m.impl("_involution3d_backward_weight", TORCH_BOX(&cpu::backward_weight_cpu<3>));
}

STABLE_TORCH_LIBRARY_IMPL(involution, CompositeExplicitAutograd, m) {
  m.impl("_cpu_capability", TORCH_BOX(&cpu::cpu_capability));
}

}  // namespace involution
