// The op library of the full-libtorch (CMake) build: every op's schema (schemas.h) with
// torch::Library, and the C++ API of the involution2d and involution3d families (cached, typed
// dispatcher calls). The kernels live in cpu/, cuda/, meta/, autograd/ and autocast/, one file
// per dispatch key, each written once as templates over the number of spatial axes.

#include <ATen/core/dispatch/Dispatcher.h>
#include <involution/involution.h>
#include <torch/library.h>

#include "schemas.h"

namespace involution {

namespace {

// The typed handle of a registered op, looked up once by each caller (a function-local static).
template <typename Fn>
c10::TypedOperatorHandle<Fn> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace

at::Tensor involution2d(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = find_op<decltype(involution2d)>("involution::involution2d");
  return op.call(input, weight, stride, padding, dilation);
}

at::Tensor involution3d(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op = find_op<decltype(involution3d)>("involution::involution3d");
  return op.call(input, weight, stride, padding, dilation);
}

namespace detail {

at::Tensor involution2d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op =
      find_op<decltype(involution2d_backward_input)>("involution::_involution2d_backward_input");
  return op.call(grad_output, weight, input_size, stride, padding, dilation);
}

at::Tensor involution3d_backward_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  static const auto op =
      find_op<decltype(involution3d_backward_input)>("involution::_involution3d_backward_input");
  return op.call(grad_output, weight, input_size, stride, padding, dilation);
}

at::Tensor involution2d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, int64_t groups,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  static const auto op =
      find_op<decltype(involution2d_backward_weight)>("involution::_involution2d_backward_weight");
  return op.call(grad_output, input, kernel_size, groups, stride, padding, dilation);
}

at::Tensor involution3d_backward_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef kernel_size, int64_t groups,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation) {
  static const auto op =
      find_op<decltype(involution3d_backward_weight)>("involution::_involution3d_backward_weight");
  return op.call(grad_output, input, kernel_size, groups, stride, padding, dilation);
}

}  // namespace detail

TORCH_LIBRARY(involution, m) {
  for (const auto& schema : detail::all_op_schemas()) {
    m.def(schema.c_str(), {at::Tag::pt2_compliant_tag});
  }
}

}  // namespace involution
