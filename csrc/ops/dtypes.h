#pragma once
// The dtypes the ops support, in one place: the argument checks (checks.cpp) and the CPU and
// CUDA dispatch sites use these, so adding a dtype means changing this file and the kernels.
// Every kernel accumulates in float for the 16-bit types (and in its own type otherwise).

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "error.h"

namespace involution {
namespace detail {

inline bool is_supported_dtype(c10::ScalarType type) {
  return type == c10::ScalarType::Double || type == c10::ScalarType::Float ||
         type == c10::ScalarType::Half || type == c10::ScalarType::BFloat16;
}

// For error messages.
constexpr const char* kSupportedDtypes = "float64, float32, float16 or bfloat16";

// Calls f(T{}) with T the C++ type of `type`, one of the supported dtypes.
template <typename F>
void dispatch_supported(c10::ScalarType type, const char* name, const F& f) {
  switch (type) {
    case c10::ScalarType::Double:
      return f(double{});
    case c10::ScalarType::Float:
      return f(float{});
    case c10::ScalarType::Half:
      return f(c10::Half{});
    case c10::ScalarType::BFloat16:
      return f(c10::BFloat16{});
    default:
      fail(name, ": unsupported dtype ", type, " (expected ", kSupportedDtypes, ")");
  }
}

}  // namespace detail
}  // namespace involution

// Runs the lambda `...` (taking no arguments) with scalar_t set to the C++ type of `type`, one
// of the supported dtypes.
#define INVOLUTION_DISPATCH_SUPPORTED_TYPES(type, name, ...)                           \
  ::involution::detail::dispatch_supported(type, name, [&](auto involution_type_tag) { \
    using scalar_t = decltype(involution_type_tag);                                    \
    (__VA_ARGS__)();                                                                   \
  })
