// The involution3d op family: schemas and the C++ API (typed dispatcher calls). The library
// itself is defined in involution2d.cpp; this adds to it. The kernels are those of involution2d
// (templates over the number of spatial axes) in cpu/, cuda/, meta/, autograd/ and autocast/.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <involution/involution.h>

namespace involution {

at::Tensor involution3d(const at::Tensor& input, const at::Tensor& weight,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("involution::involution3d", "")
                       .typed<decltype(involution3d)>();
  return op.call(input, weight, stride, padding, dilation);
}

namespace detail {

at::Tensor involution3d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("involution::_involution3d_backward_input", "")
                       .typed<decltype(involution3d_backward_input)>();
  return op.call(grad_output, weight, input_size, stride, padding, dilation);
}

at::Tensor involution3d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, int64_t groups,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("involution::_involution3d_backward_weight", "")
                       .typed<decltype(involution3d_backward_weight)>();
  return op.call(grad_output, input, kernel_size, groups, stride, padding, dilation);
}

}  // namespace detail

TORCH_LIBRARY_FRAGMENT(involution, m) {
  m.def(
      "involution3d(Tensor input, Tensor weight, int[3] stride, int[3] padding, "
      "int[3] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_involution3d_backward_input(Tensor grad_output, Tensor weight, SymInt[3] input_size, "
      "int[3] stride, int[3] padding, int[3] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_involution3d_backward_weight(Tensor grad_output, Tensor input, int[3] kernel_size, "
      "int groups, int[3] stride, int[3] padding, int[3] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
}

}  // namespace involution
