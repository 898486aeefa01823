// Autocast for fused_involution2d and fused_involution3d, with the policy of the unfused ops
// (and of conv2d): inside an autocast region, float32 operands are cast to the region's
// lower-precision dtype and the op runs, and returns, in it; the kernels accumulate in float32.

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "../aten_info.h"
#include "../op_family.h"

namespace involution {
namespace {

template <int64_t Dims, c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor fused_forward_autocast(const at::Tensor& input, const at::Tensor& reduced,
                                  const at::Tensor& span_weight,
                                  const std::optional<at::Tensor>& span_bias,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = detail::OpFamily<Dims>::fused_name;
  detail::check_defined(op, "input", input);
  detail::check_defined(op, "reduced", reduced);
  detail::check_defined(op, "span_weight", span_weight);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  auto cast = [&](const at::Tensor& t) { return at::autocast::cached_cast(dtype, t, device_type); };
  std::optional<at::Tensor> bias;
  if (span_bias.has_value() && span_bias->defined()) bias = cast(*span_bias);
  return detail::OpFamily<Dims>::fused(cast(input), cast(reduced), cast(span_weight), bias,
                                       kernel_size, stride, padding, dilation);
}

constexpr auto kCPU = c10::DispatchKey::AutocastCPU;
constexpr auto kCUDA = c10::DispatchKey::AutocastCUDA;

}  // namespace

TORCH_LIBRARY_IMPL(involution, AutocastCPU, m) {
  m.impl("fused_involution2d", TORCH_FN((fused_forward_autocast<2, kCPU, c10::DeviceType::CPU>)));
  m.impl("fused_involution3d", TORCH_FN((fused_forward_autocast<3, kCPU, c10::DeviceType::CPU>)));
}

TORCH_LIBRARY_IMPL(involution, AutocastCUDA, m) {
  m.impl("fused_involution2d", TORCH_FN((fused_forward_autocast<2, kCUDA, c10::DeviceType::CUDA>)));
  m.impl("fused_involution3d", TORCH_FN((fused_forward_autocast<3, kCUDA, c10::DeviceType::CUDA>)));
}

}  // namespace involution
