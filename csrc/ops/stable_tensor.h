#pragma once
// The tensor operations the device kernels' glue needs, on PyTorch's stable ABI
// (torch::stable): what the checks read of a tensor, memory layouts from strides, and
// allocation. The glue of every device (cpu/, cuda/) uses these and nothing of ATen, so the
// same sources build the wheel's library (stable ABI only) and the CMake library.

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/MemoryFormat.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "checks.h"

namespace involution {
namespace detail {

using torch::stable::Tensor;
using MemoryFormat = torch::headeronly::MemoryFormat;

// "cpu", "cuda:0", ... as torch prints a device.
inline std::string device_name(const torch::stable::Device& device) {
  std::string name;
  switch (device.type()) {
    case c10::DeviceType::CPU:
      return "cpu";
    case c10::DeviceType::CUDA:
      name = "cuda";
      break;
    case c10::DeviceType::Meta:
      name = "meta";
      break;
    case c10::DeviceType::HIP:
      name = "hip";
      break;
    case c10::DeviceType::XPU:
      name = "xpu";
      break;
    case c10::DeviceType::MPS:
      name = "mps";
      break;
    default:
      name = "device type " + std::to_string(static_cast<int>(device.type()));
      break;
  }
  return device.has_index() ? name + ":" + std::to_string(device.index()) : name;
}

inline TensorInfo<int64_t> info(const Tensor& t) {
  TensorInfo<int64_t> i;
  i.defined = t.defined();
  if (!i.defined) return i;
  const auto sizes = t.sizes();
  i.sizes.assign(sizes.begin(), sizes.end());
  i.dtype = t.scalar_type();
  i.device = device_name(t.device());
  return i;
}

inline TensorInfo<int64_t> info(const std::optional<Tensor>& t) {
  return t.has_value() ? info(*t) : TensorInfo<int64_t>{};
}

// The order in which channels_last (4-D) and channels_last_3d (5-D) tensors lay out their axes,
// innermost first: C, then the spatial axes from the last, then the batch.
inline std::vector<int64_t> channels_last_order(int64_t dim) {
  std::vector<int64_t> order = {1};
  for (int64_t d = dim - 1; d >= 2; --d) order.push_back(d);
  order.push_back(0);
  return order;
}

// Whether the strides look like channels_last (what torch's suggest_memory_format calls
// ChannelsLast/ChannelsLast3d): the same rule as c10's is_channels_last_strides_*, ambiguous
// cases (C == 1 with matching strides) counting as contiguous.
inline bool strides_like_channels_last(const Tensor& t) {
  const int64_t dim = t.dim();
  if (dim != 4 && dim != 5) return false;
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  if (strides[1] == 0) return false;
  int64_t min = 0;
  for (const int64_t d : channels_last_order(dim)) {
    if (sizes[d] == 0 || strides[d] < min) return false;
    if (d == 0 && min == strides[1]) return false;
    min = strides[d];
    if (sizes[d] > 1) min *= sizes[d];
  }
  return true;
}

// The layout results take after `t`: channels_last(_3d) when its strides look so, else
// contiguous (torch's suggest_memory_format).
inline MemoryFormat layout_of(const Tensor& t) {
  if (!strides_like_channels_last(t)) return MemoryFormat::Contiguous;
  return t.dim() == 4 ? MemoryFormat::ChannelsLast : MemoryFormat::ChannelsLast3d;
}

// Whether `t` is dense in `layout` (Tensor::is_contiguous(memory_format)).
inline bool is_contiguous_in(const Tensor& t, MemoryFormat layout) {
  if (layout == MemoryFormat::Contiguous) return t.is_contiguous();
  const auto sizes = t.sizes();
  const auto strides = t.strides();
  int64_t expected = 1;
  for (const int64_t d : channels_last_order(t.dim())) {
    if (sizes[d] != 1) {
      if (strides[d] != expected) return false;
      expected *= sizes[d];
    }
  }
  return true;
}

// Channels-last input the fused CPU kernels read in place: strides like channels_last and dense.
inline bool is_channels_last(const Tensor& t) {
  const MemoryFormat layout = layout_of(t);
  return layout != MemoryFormat::Contiguous && is_contiguous_in(t, layout);
}

inline Tensor dense(const Tensor& t, MemoryFormat layout = MemoryFormat::Contiguous) {
  return is_contiguous_in(t, layout) ? t : torch::stable::contiguous(t, layout);
}

inline Tensor allocate(IntList sizes, c10::ScalarType dtype, const Tensor& device_of,
                       MemoryFormat layout = MemoryFormat::Contiguous) {
  return torch::stable::empty(sizes, dtype, std::nullopt, device_of.device(), std::nullopt, layout);
}

// Uninitialised, of `like`'s dtype and device, laid out like `like`.
inline Tensor empty_like_layout(IntList sizes, const Tensor& like) {
  return allocate(sizes, like.scalar_type(), like, layout_of(like));
}

inline Tensor allocate_zeros(IntList sizes, c10::ScalarType dtype, const Tensor& device_of) {
  return torch::stable::new_zeros(device_of, sizes, dtype);
}

// The fused backward's bool[4] output_mask, checked.
inline std::array<bool, 4> output_mask(const std::vector<bool>& mask) {
  INVOLUTION_CHECK(mask.size() == 4, "expected output_mask to have 4 elements, but got ",
                   mask.size());
  return {mask[0], mask[1], mask[2], mask[3]};
}

// The accumulation dtype of the kernels for tensors of dtype t: float for the 16-bit types.
inline c10::ScalarType acc_dtype(c10::ScalarType t) {
  return t == c10::ScalarType::Double ? t : c10::ScalarType::Float;
}

inline Tensor to_dtype(const Tensor& t, c10::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}

// t in `dtype` and contiguous (the span weight and bias as the fused kernels read them, in their
// accumulation type); an absent or undefined optional gives an undefined tensor.
inline Tensor dense_as(const Tensor& t, c10::ScalarType dtype) { return dense(to_dtype(t, dtype)); }
inline Tensor dense_as(const std::optional<Tensor>& t, c10::ScalarType dtype) {
  return t.has_value() && t->defined() ? dense_as(*t, dtype) : Tensor();
}

}  // namespace detail
}  // namespace involution
