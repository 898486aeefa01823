// CPU kernels of the involution2d and involution3d ops (one implementation, `Dims` axes).

#include <torch/library.h>

#include "../op_family.h"
#include "involution_cpu.h"

namespace involution {
namespace {

using detail::OpFamily;

template <int64_t Dims>
at::Tensor forward_cpu(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  return cpu::forward(OpFamily<Dims>::name, Dims, input, weight, stride, padding, dilation);
}

template <int64_t Dims>
at::Tensor backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                              c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  return cpu::backward_input(OpFamily<Dims>::backward_input_name, Dims, grad_output, weight,
                             input_size, stride, padding, dilation);
}

template <int64_t Dims>
at::Tensor backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                               at::IntArrayRef kernel_size, int64_t groups, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  return cpu::backward_weight(OpFamily<Dims>::backward_weight_name, Dims, grad_output, input,
                              kernel_size, groups, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, CPU, m) {
  m.impl("involution2d", TORCH_FN(forward_cpu<2>));
  m.impl("_involution2d_backward_input", TORCH_FN(backward_input_cpu<2>));
  m.impl("_involution2d_backward_weight", TORCH_FN(backward_weight_cpu<2>));
  m.impl("involution3d", TORCH_FN(forward_cpu<3>));
  m.impl("_involution3d_backward_input", TORCH_FN(backward_input_cpu<3>));
  m.impl("_involution3d_backward_weight", TORCH_FN(backward_weight_cpu<3>));
}

}  // namespace involution
