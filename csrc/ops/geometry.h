#pragma once
// The sizes of one involution problem, as plain integers, for the kernels.
//
// Every kernel works on three spatial axes (depth, height, width); a 2-D problem is a 3-D one
// with depth 1 and kernel depth 1, so 2-D and 3-D share one implementation per device.
// This header is free of framework types on purpose: kernels take pointers and a Geometry.
// The helpers are constexpr so that device code may call them (nvcc --expt-relaxed-constexpr).

#include <cstdint>

namespace involution {

struct Geometry {
  int64_t batch = 0;
  int64_t channels = 0;
  int64_t groups = 1;
  // Index 0 = depth, 1 = height, 2 = width.
  int64_t in[3] = {1, 1, 1};
  int64_t out[3] = {1, 1, 1};
  int64_t kernel[3] = {1, 1, 1};
  int64_t stride[3] = {1, 1, 1};
  int64_t padding[3] = {0, 0, 0};
  int64_t dilation[3] = {1, 1, 1};

  constexpr int64_t channels_per_group() const { return channels / groups; }
  constexpr int64_t taps() const { return kernel[0] * kernel[1] * kernel[2]; }
  constexpr int64_t in_volume() const { return in[0] * in[1] * in[2]; }
  constexpr int64_t out_volume() const { return out[0] * out[1] * out[2]; }
};

}  // namespace involution
