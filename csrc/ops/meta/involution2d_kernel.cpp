// Meta kernels of the involution2d ops: run the same checks as the real kernels and return an
// empty tensor of the right (possibly symbolic) shape. FakeTensor mode, and so torch.compile,
// torch.export and torch.library.opcheck, use these.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"

namespace involution {
namespace {

at::Tensor involution2d_meta(const at::Tensor& input, const at::Tensor& weight,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation) {
  const auto sizes =
      detail::check_forward("involution2d", 2, input, weight, stride, padding, dilation);
  return at::empty_symint(sizes, input.options());
}

at::Tensor involution2d_backward_input_meta(const at::Tensor& grad_output,
                                            const at::Tensor& weight,
                                            c10::SymIntArrayRef input_size,
                                            at::IntArrayRef stride, at::IntArrayRef padding,
                                            at::IntArrayRef dilation) {
  const auto sizes = detail::check_backward_input("involution2d_backward_input", 2, grad_output,
                                                  weight, input_size, stride, padding, dilation);
  return at::empty_symint(sizes, grad_output.options());
}

at::Tensor involution2d_backward_weight_meta(const at::Tensor& grad_output,
                                             const at::Tensor& input,
                                             at::IntArrayRef kernel_size, int64_t groups,
                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                             at::IntArrayRef dilation) {
  const auto sizes =
      detail::check_backward_weight("involution2d_backward_weight", 2, grad_output, input,
                                    kernel_size, groups, stride, padding, dilation);
  return at::empty_symint(sizes, grad_output.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, Meta, m) {
  m.impl("involution2d", TORCH_FN(involution2d_meta));
  m.impl("_involution2d_backward_input", TORCH_FN(involution2d_backward_input_meta));
  m.impl("_involution2d_backward_weight", TORCH_FN(involution2d_backward_weight_meta));
}

}  // namespace involution
