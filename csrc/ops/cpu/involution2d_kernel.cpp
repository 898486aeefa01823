// CPU kernels of the involution2d ops.

#include <torch/library.h>

#include "involution_cpu.h"

namespace involution {
namespace {

at::Tensor involution2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation) {
  return cpu::forward("involution2d", 2, input, weight, stride, padding, dilation);
}

at::Tensor involution2d_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                           c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation) {
  return cpu::backward_input("involution2d_backward_input", 2, grad_output, weight, input_size,
                             stride, padding, dilation);
}

at::Tensor involution2d_backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            at::IntArrayRef kernel_size, int64_t groups,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation) {
  return cpu::backward_weight("involution2d_backward_weight", 2, grad_output, input, kernel_size,
                              groups, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, CPU, m) {
  m.impl("involution2d", TORCH_FN(involution2d_cpu));
  m.impl("_involution2d_backward_input", TORCH_FN(involution2d_backward_input_cpu));
  m.impl("_involution2d_backward_weight", TORCH_FN(involution2d_backward_weight_cpu));
}

}  // namespace involution
