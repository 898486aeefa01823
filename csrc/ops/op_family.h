#pragma once
// The two op families, involution2d and involution3d (with their fused forms), by number of
// spatial axes: their names (for messages) and their typed dispatcher calls, so that each dispatch
// key's kernels are written once as templates over `Dims`.

#include <involution/involution.h>

namespace involution {
namespace detail {

template <int64_t Dims>
struct OpFamily;

template <>
struct OpFamily<2> {
  static constexpr const char* name = "involution2d";
  static constexpr const char* backward_input_name = "involution2d_backward_input";
  static constexpr const char* backward_weight_name = "involution2d_backward_weight";
  static constexpr auto forward = &involution::involution2d;
  static constexpr auto backward_input = &involution2d_backward_input;
  static constexpr auto backward_weight = &involution2d_backward_weight;
  static constexpr const char* fused_name = "fused_involution2d";
  static constexpr const char* fused_backward_name = "fused_involution2d_backward";
  static constexpr auto fused = &involution::fused_involution2d;
  static constexpr auto fused_backward = &fused_involution2d_backward;
};

template <>
struct OpFamily<3> {
  static constexpr const char* name = "involution3d";
  static constexpr const char* backward_input_name = "involution3d_backward_input";
  static constexpr const char* backward_weight_name = "involution3d_backward_weight";
  static constexpr auto forward = &involution::involution3d;
  static constexpr auto backward_input = &involution3d_backward_input;
  static constexpr auto backward_weight = &involution3d_backward_weight;
  static constexpr const char* fused_name = "fused_involution3d";
  static constexpr const char* fused_backward_name = "fused_involution3d_backward";
  static constexpr auto fused = &involution::fused_involution3d;
  static constexpr auto fused_backward = &fused_involution3d_backward;
};

}  // namespace detail
}  // namespace involution
