// The fused involution ops, fused_involution2d and fused_involution3d: the C++ API (cached, typed
// dispatcher calls). The kernel is generated from the reduced tensor by the 1x1 span convolution
// where it is used and never stored; the kernels live in cpu/, cuda/, meta/, autograd/ and
// autocast/ (fused_involution_kernel.*), one file per dispatch key.

#include <ATen/core/dispatch/Dispatcher.h>
#include <involution/involution.h>
#include <torch/library.h>

namespace involution {

namespace {

template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace

at::Tensor fused_involution2d(const at::Tensor& input, const at::Tensor& reduced,
                              const at::Tensor& span_weight,
                              const std::optional<at::Tensor>& span_bias,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = find_op<decltype(fused_involution2d)>("involution::fused_involution2d");
  return op.call(input, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation);
}

at::Tensor fused_involution3d(const at::Tensor& input, const at::Tensor& reduced,
                              const at::Tensor& span_weight,
                              const std::optional<at::Tensor>& span_bias,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = find_op<decltype(fused_involution3d)>("involution::fused_involution3d");
  return op.call(input, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation);
}

namespace detail {

FusedGradients fused_involution2d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& reduced, const at::Tensor& span_weight,
                                           const std::optional<at::Tensor>& span_bias,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           std::array<bool, 4> output_mask) {
  static const auto op =
      find_op<decltype(fused_involution2d_backward)>("involution::_fused_involution2d_backward");
  return op.call(grad_output, input, reduced, span_weight, span_bias, kernel_size, stride, padding,
                 dilation, output_mask);
}

FusedGradients fused_involution3d_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& reduced, const at::Tensor& span_weight,
                                           const std::optional<at::Tensor>& span_bias,
                                           at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, at::IntArrayRef dilation,
                                           std::array<bool, 4> output_mask) {
  static const auto op =
      find_op<decltype(fused_involution3d_backward)>("involution::_fused_involution3d_backward");
  return op.call(grad_output, input, reduced, span_weight, span_bias, kernel_size, stride, padding,
                 dilation, output_mask);
}

}  // namespace detail

}  // namespace involution
