// Meta kernels of the fused ops: the same checks as the real kernels, and empty results of the
// right (possibly symbolic) shape and layout, for FakeTensor mode (torch.compile, torch.export,
// torch.library.opcheck).

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../aten_info.h"
#include "../op_family.h"

namespace involution {
namespace {

using detail::OpFamily;

// Results take the layout (contiguous or channels_last) of the tensor they correspond to, as
// the CPU and CUDA kernels' do.
at::Tensor empty_like_layout(c10::SymIntArrayRef sizes, const at::Tensor& like) {
  return at::empty_symint(sizes, like.options(), like.suggest_memory_format());
}

template <int64_t Dims>
at::Tensor fused_forward_meta(const at::Tensor& input, const at::Tensor& reduced,
                              const at::Tensor& span_weight,
                              const std::optional<at::Tensor>& span_bias,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto sizes = detail::check_fused_forward(
      OpFamily<Dims>::fused_name, Dims, detail::info(input), detail::info(reduced),
      detail::info(span_weight), detail::info(span_bias), kernel_size, {stride, padding, dilation});
  return empty_like_layout(sizes.output, input);
}

template <int64_t Dims>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& reduced,
    const at::Tensor& span_weight, const std::optional<at::Tensor>& span_bias,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 4> mask) {
  detail::check_fused_backward(OpFamily<Dims>::fused_backward_name, Dims, detail::info(grad_output),
                               detail::info(input), detail::info(reduced),
                               detail::info(span_weight), detail::info(span_bias), kernel_size,
                               {stride, padding, dilation});
  const bool has_bias = span_bias.has_value() && span_bias->defined();
  const auto none = [&] { return at::empty({0}, input.options()); };
  return {mask[0] ? empty_like_layout(input.sym_sizes(), input) : none(),
          mask[1] ? empty_like_layout(reduced.sym_sizes(), reduced) : none(),
          mask[2] ? at::empty_symint(span_weight.sym_sizes(), input.options()) : none(),
          mask[3] && has_bias ? at::empty_symint(span_bias->sym_sizes(), input.options()) : none()};
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, Meta, m) {
  m.impl("fused_involution2d", TORCH_FN(fused_forward_meta<2>));
  m.impl("_fused_involution2d_backward", TORCH_FN(fused_backward_meta<2>));
  m.impl("fused_involution3d", TORCH_FN(fused_forward_meta<3>));
  m.impl("_fused_involution3d_backward", TORCH_FN(fused_backward_meta<3>));
}

}  // namespace involution
