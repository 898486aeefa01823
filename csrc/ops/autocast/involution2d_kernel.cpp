// Autocast for involution2d.
//
// Dtype policy (the same as conv2d's): inside an autocast region, float32 input and weight are
// cast to the region's lower-precision dtype (bfloat16 by default on the CPU) and the op runs,
// and returns, in that dtype; the kernels accumulate in float32. float64 tensors are left alone.
// The gradient ops need no autocast kernel: they see the dtypes the forward saw.

#include <ATen/autocast_mode.h>
#include <torch/library.h>

#include <involution/involution.h>

namespace involution {
namespace {

template <c10::DispatchKey autocast_key, c10::DeviceType device_type>
at::Tensor involution2d_autocast(const at::Tensor& input, const at::Tensor& weight,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(autocast_key);
  const auto dtype = at::autocast::get_autocast_dtype(device_type);
  return involution2d(at::autocast::cached_cast(dtype, input, device_type),
                      at::autocast::cached_cast(dtype, weight, device_type), stride, padding,
                      dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, AutocastCPU, m) {
  m.impl("involution2d",
         TORCH_FN((involution2d_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>)));
}

TORCH_LIBRARY_IMPL(involution, AutocastCUDA, m) {
  m.impl("involution2d",
         TORCH_FN((involution2d_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>)));
}

}  // namespace involution
