// The involution2d op family: schemas and the C++ API (typed dispatcher calls).
// Kernels live in cpu/, cuda/, meta/, autograd/ and autocast/, one file per dispatch key, each
// written once as templates over the number of spatial axes for involution2d and involution3d.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <involution/involution.h>

namespace involution {

at::Tensor involution2d(const at::Tensor& input, const at::Tensor& weight,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("involution::involution2d", "")
                       .typed<decltype(involution2d)>();
  return op.call(input, weight, stride, padding, dilation);
}

namespace detail {

at::Tensor involution2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("involution::_involution2d_backward_input", "")
                       .typed<decltype(involution2d_backward_input)>();
  return op.call(grad_output, weight, input_size, stride, padding, dilation);
}

at::Tensor involution2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, int64_t groups,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("involution::_involution2d_backward_weight", "")
                       .typed<decltype(involution2d_backward_weight)>();
  return op.call(grad_output, input, kernel_size, groups, stride, padding, dilation);
}

}  // namespace detail

TORCH_LIBRARY(involution, m) {
  m.def(
      "involution2d(Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_involution2d_backward_input(Tensor grad_output, Tensor weight, SymInt[2] input_size, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_involution2d_backward_weight(Tensor grad_output, Tensor input, int[2] kernel_size, "
      "int groups, int[2] stride, int[2] padding, int[2] dilation) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  // The benchmark's baseline on CUDA: the official CuPy kernel's design (one thread per output
  // element). CUDA only; not part of the API.
  m.def(
      "_involution2d_naive(Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation) -> Tensor");
}

}  // namespace involution
