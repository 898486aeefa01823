// Autocast for involution2d and involution3d.
//
// Dtype policy (the same as conv2d's): inside an autocast region, float32 input and weight are
// cast to the region's lower-precision dtype (bfloat16 by default on the CPU) and the op runs,
// and returns, in that dtype; the kernels accumulate in float32. float64 tensors are left alone.
// The gradient ops need no autocast kernel: they see the dtypes the forward saw.

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include "../aten_info.h"
#include "../op_family.h"

namespace involution {
namespace {

template <int64_t Dims, c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor forward_autocast(const at::Tensor& input, const at::Tensor& weight,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation) {
  detail::check_defined(detail::OpFamily<Dims>::name, "input", input);
  detail::check_defined(detail::OpFamily<Dims>::name, "weight", weight);
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  return detail::OpFamily<Dims>::forward(at::autocast::cached_cast(dtype, input, device_type),
                                         at::autocast::cached_cast(dtype, weight, device_type),
                                         stride, padding, dilation);
}

constexpr auto kCPU = c10::DispatchKey::AutocastCPU;
constexpr auto kCUDA = c10::DispatchKey::AutocastCUDA;

}  // namespace

TORCH_LIBRARY_IMPL(involution, AutocastCPU, m) {
  m.impl("involution2d", TORCH_FN((forward_autocast<2, kCPU, c10::DeviceType::CPU>)));
  m.impl("involution3d", TORCH_FN((forward_autocast<3, kCPU, c10::DeviceType::CPU>)));
}

TORCH_LIBRARY_IMPL(involution, AutocastCUDA, m) {
  m.impl("involution2d", TORCH_FN((forward_autocast<2, kCUDA, c10::DeviceType::CUDA>)));
  m.impl("involution3d", TORCH_FN((forward_autocast<3, kCUDA, c10::DeviceType::CUDA>)));
}

}  // namespace involution
