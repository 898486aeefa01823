#pragma once
// What the CUDA glue needs of torch beyond stable_tensor.h, on PyTorch's stable ABI: the
// current stream, a device guard, the launch check, and the accumulation type.
// The C shims for CUDA are declared under USE_CUDA, which the build defines for .cu files.

#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>

#include <type_traits>

#include "../stable_tensor.h"

namespace involution {
namespace cuda {

// The accumulation type of each storage type: float for the 16-bit types.
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Makes the device of `t` current for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(const detail::Tensor& t) : guard_(t.get_device_index()) {}

 private:
  torch::stable::accelerator::DeviceGuard guard_;
};

// torch's current CUDA stream on the current device.
inline cudaStream_t current_stream() {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(
      static_cast<int32_t>(torch::stable::accelerator::getCurrentDeviceIndex()), &stream));
  return static_cast<cudaStream_t>(stream);
}

}  // namespace cuda
}  // namespace involution

// Throws (with CUDA's message) if the last kernel launch failed.
#define INVOLUTION_CUDA_LAUNCH_CHECK() STD_CUDA_KERNEL_LAUNCH_CHECK()
