#pragma once
// What the checks (checks.h) read of an ATen tensor, with symbolic sizes: for the kernels of
// the full-libtorch build that see at::Tensor (meta, autograd, autocast).

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>

#include "checks.h"

namespace involution {
namespace detail {

inline TensorInfo<c10::SymInt> info(const at::Tensor& t) {
  TensorInfo<c10::SymInt> i;
  i.defined = t.defined();
  if (!i.defined) return i;
  const auto sizes = t.sym_sizes();
  i.sizes.assign(sizes.begin(), sizes.end());
  i.dtype = t.scalar_type();
  i.device = t.device().str();
  return i;
}

inline TensorInfo<c10::SymInt> info(const std::optional<at::Tensor>& t) {
  return t.has_value() ? info(*t) : TensorInfo<c10::SymInt>{};
}

inline void check_defined(const char* op, const char* name, const at::Tensor& t) {
  check_defined(op, name, t.defined());
}

}  // namespace detail
}  // namespace involution
