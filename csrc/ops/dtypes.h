#pragma once
// The dtypes the ops support, in one place: the argument checks (checks.cpp) and the CPU and
// CUDA dispatch sites use these, so adding a dtype means changing this file and the kernels.
// Every kernel accumulates in at::opmath_type of its dtype (float for the 16-bit types).

#include <ATen/Dispatch.h>
#include <c10/core/ScalarType.h>

// Runs the lambda `...` with scalar_t set to the C++ type of `type`, one of the supported dtypes.
#define INVOLUTION_DISPATCH_SUPPORTED_TYPES(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

namespace involution {
namespace detail {

inline bool is_supported_dtype(c10::ScalarType type) {
  return type == at::kDouble || type == at::kFloat || type == at::kHalf || type == at::kBFloat16;
}

// For error messages.
constexpr const char* kSupportedDtypes = "float64, float32, float16 or bfloat16";

}  // namespace detail
}  // namespace involution
