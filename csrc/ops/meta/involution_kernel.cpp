// Meta kernels of the involution2d and involution3d ops: run the same checks as the real kernels
// and return an empty tensor of the right (possibly symbolic) shape. FakeTensor mode, and so
// torch.compile, torch.export and torch.library.opcheck, use these.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../aten_info.h"
#include "../op_family.h"

namespace involution {
namespace {

using detail::OpFamily;

template <int64_t Dims>
at::Tensor forward_meta(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto sizes = detail::check_forward(OpFamily<Dims>::name, Dims, detail::info(input),
                                           detail::info(weight), {stride, padding, dilation});
  return at::empty_symint(sizes, input.options());
}

template <int64_t Dims>
at::Tensor backward_input_meta(const at::Tensor& grad_output, const at::Tensor& weight,
                               c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto sizes = detail::check_backward_input(OpFamily<Dims>::backward_input_name, Dims,
                                                  detail::info(grad_output), detail::info(weight),
                                                  input_size, {stride, padding, dilation});
  return at::empty_symint(sizes, grad_output.options());
}

template <int64_t Dims>
at::Tensor backward_weight_meta(const at::Tensor& grad_output, const at::Tensor& input,
                                at::IntArrayRef kernel_size, int64_t groups, at::IntArrayRef stride,
                                at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto sizes = detail::check_backward_weight(
      OpFamily<Dims>::backward_weight_name, Dims, detail::info(grad_output), detail::info(input),
      kernel_size, groups, {stride, padding, dilation});
  return at::empty_symint(sizes, grad_output.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, Meta, m) {
  m.impl("involution2d", TORCH_FN(forward_meta<2>));
  m.impl("_involution2d_backward_input", TORCH_FN(backward_input_meta<2>));
  m.impl("_involution2d_backward_weight", TORCH_FN(backward_weight_meta<2>));
  m.impl("involution3d", TORCH_FN(forward_meta<3>));
  m.impl("_involution3d_backward_input", TORCH_FN(backward_input_meta<3>));
  m.impl("_involution3d_backward_weight", TORCH_FN(backward_weight_meta<3>));
}

}  // namespace involution
