// The op library of the wheel, on PyTorch's stable ABI: every op's schema (schemas.h). The
// kernels are registered by cpu/ and cuda/; what the stable ABI cannot express (autograd,
// fake kernels, autocast) is registered from Python (involution/_registrations.py).
//
// For the fake kernels, the library also defines _checked_sizes: the C++ checks and shape
// arithmetic of checks.h on tensors described by their sizes, dtypes and devices, so that fake
// tensors (torch.compile, torch.export, opcheck) and meta tensors get the same checks and
// messages as real ones, from the same code.

#include <torch/csrc/stable/library.h>

#include <string>
#include <vector>

#include "checks.h"
#include "op_names.h"
#include "schemas.h"

namespace involution {
namespace detail {
namespace {

template <int64_t Dims>
bool checked_sizes_of(const std::string& op, const std::vector<TensorInfo<int64_t>>& t,
                      IntList kernel_size, int64_t groups, IntList input_size, const Window& window,
                      std::vector<int64_t>& sizes) {
  using Names = OpNames<Dims>;
  auto operands = [&](size_t n) {
    INVOLUTION_CHECK(t.size() == n, "_checked_sizes: ", op, " takes ", n, " tensors, but got ",
                     t.size());
  };
  if (op == Names::name) {
    operands(2);
    sizes = check_forward(Names::name, Dims, t[0], t[1], window);
  } else if (op == Names::backward_input_name) {
    operands(2);
    sizes = check_backward_input(Names::backward_input_name, Dims, t[0], t[1], input_size, window);
  } else if (op == Names::backward_weight_name) {
    operands(2);
    sizes = check_backward_weight(Names::backward_weight_name, Dims, t[0], t[1], kernel_size,
                                  groups, window);
  } else if (op == Names::fused_name) {
    operands(4);
    sizes =
        check_fused_forward(Names::fused_name, Dims, t[0], t[1], t[2], t[3], kernel_size, window)
            .output;
  } else if (op == Names::fused_backward_name) {
    operands(5);
    sizes = check_fused_backward(Names::fused_backward_name, Dims, t[0], t[1], t[2], t[3], t[4],
                                 kernel_size, window)
                .output;
  } else {
    return false;
  }
  return true;
}

// The result sizes of `op` (one of the names of op_names.h; the output's for the fused ops),
// or the error its kernels would raise. Tensor i has ranks[i] sizes, taken in order from
// `sizes` (rank -1: None), dtypes[i] and devices[i].
std::vector<int64_t> checked_sizes(std::string op, std::vector<int64_t> ranks,
                                   std::vector<int64_t> sizes, std::vector<c10::ScalarType> dtypes,
                                   std::vector<std::string> devices,
                                   std::vector<int64_t> kernel_size, int64_t groups,
                                   std::vector<int64_t> input_size, std::vector<int64_t> stride,
                                   std::vector<int64_t> padding, std::vector<int64_t> dilation) {
  INVOLUTION_CHECK(dtypes.size() == ranks.size() && devices.size() == ranks.size(),
                   "_checked_sizes: expected one dtype and one device per tensor");
  std::vector<TensorInfo<int64_t>> tensors(ranks.size());
  size_t next = 0;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] < 0) continue;
    INVOLUTION_CHECK(next + ranks[i] <= sizes.size(), "_checked_sizes: expected ", ranks[i],
                     " more sizes");
    tensors[i].defined = true;
    tensors[i].sizes.assign(sizes.begin() + next, sizes.begin() + next + ranks[i]);
    tensors[i].dtype = dtypes[i];
    tensors[i].device = devices[i];
    next += ranks[i];
  }
  const Window window{stride, padding, dilation};
  std::vector<int64_t> result;
  if (checked_sizes_of<2>(op, tensors, kernel_size, groups, input_size, window, result) ||
      checked_sizes_of<3>(op, tensors, kernel_size, groups, input_size, window, result)) {
    return result;
  }
  fail("_checked_sizes: unknown op ", op);
}

}  // namespace
}  // namespace detail
}  // namespace involution

STABLE_TORCH_LIBRARY(involution, m) {
  for (const auto& schema : involution::detail::all_op_schemas()) {
#if TORCH_FEATURE_VERSION >= TORCH_VERSION_2_12_0
    m.def(schema.c_str(), {at::Tag::pt2_compliant_tag});
#else
    m.def(schema.c_str());
#endif
  }
  m.def(
      "_checked_sizes(str op, int[] ranks, int[] sizes, ScalarType[] dtypes, str[] devices, "
      "int[] kernel_size, int groups, int[] input_size, int[] stride, int[] padding, "
      "int[] dilation) -> int[]");
}

STABLE_TORCH_LIBRARY_IMPL(involution, CompositeExplicitAutograd, m) {
  m.impl("_checked_sizes", TORCH_BOX(&involution::detail::checked_sizes));
}
