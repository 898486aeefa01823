#pragma once
// The names of the two op families, involution2d and involution3d (with their fused forms), by
// number of spatial axes, for messages: each dispatch key's kernels are written once as
// templates over `Dims`. Framework-free; op_family.h adds the C++ API's typed calls.

#include <cstdint>

namespace involution {
namespace detail {

template <int64_t Dims>
struct OpNames;

template <>
struct OpNames<2> {
  static constexpr const char* name = "involution2d";
  static constexpr const char* backward_input_name = "involution2d_backward_input";
  static constexpr const char* backward_weight_name = "involution2d_backward_weight";
  static constexpr const char* fused_name = "fused_involution2d";
  static constexpr const char* fused_backward_name = "fused_involution2d_backward";
};

template <>
struct OpNames<3> {
  static constexpr const char* name = "involution3d";
  static constexpr const char* backward_input_name = "involution3d_backward_input";
  static constexpr const char* backward_weight_name = "involution3d_backward_weight";
  static constexpr const char* fused_name = "fused_involution3d";
  static constexpr const char* fused_backward_name = "fused_involution3d_backward";
};

}  // namespace detail
}  // namespace involution
