#pragma once
// The two op families by number of spatial axes: their names (op_names.h) and their typed
// dispatcher calls (the C++ API of involution.h), for the kernels of the full-libtorch build
// (autograd, autocast, meta), written once as templates over `Dims`.

#include <involution/involution.h>

#include "op_names.h"

namespace involution {
namespace detail {

template <int64_t Dims>
struct OpFamily;

template <>
struct OpFamily<2> : OpNames<2> {
  static constexpr auto forward = &involution::involution2d;
  static constexpr auto backward_input = &involution2d_backward_input;
  static constexpr auto backward_weight = &involution2d_backward_weight;
  static constexpr auto fused = &involution::fused_involution2d;
  static constexpr auto fused_backward = &fused_involution2d_backward;
};

template <>
struct OpFamily<3> : OpNames<3> {
  static constexpr auto forward = &involution::involution3d;
  static constexpr auto backward_input = &involution3d_backward_input;
  static constexpr auto backward_weight = &involution3d_backward_weight;
  static constexpr auto fused = &involution::fused_involution3d;
  static constexpr auto fused_backward = &fused_involution3d_backward;
};

}  // namespace detail
}  // namespace involution
