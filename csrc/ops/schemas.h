#pragma once
// The schemas of every op of the library, in one place: both builds define them from here (the
// CMake library with torch::Library in involution.cpp, the wheel's with the stable ABI in
// stable_library.cpp). Framework-free.

#include <string>
#include <vector>

namespace involution {
namespace detail {

// involutionNd, its two gradient ops, fused_involutionNd and its backward, for N = dims.
inline std::vector<std::string> op_schemas(int dims) {
  const std::string n = std::to_string(dims);
  const std::string ints = "int[" + n + "]";
  const std::string window = ints + " stride, " + ints + " padding, " + ints + " dilation";
  const std::string fused_arguments =
      "Tensor input, Tensor reduced, Tensor span_weight, "
      "Tensor? span_bias, " +
      ints + " kernel_size, " + window;
  return {
      "involution" + n + "d(Tensor input, Tensor weight, " + window + ") -> Tensor",
      "_involution" + n + "d_backward_input(Tensor grad_output, Tensor weight, SymInt[" + n +
          "] input_size, " + window + ") -> Tensor",
      "_involution" + n + "d_backward_weight(Tensor grad_output, Tensor input, " + ints +
          " kernel_size, int groups, " + window + ") -> Tensor",
      "fused_involution" + n + "d(" + fused_arguments + ") -> Tensor",
      "_fused_involution" + n + "d_backward(Tensor grad_output, " + fused_arguments +
          ", bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)",
  };
}

// Every op's schema: both families, and _cpu_capability() -> str, the instruction set of the
// CPU kernels the library chose ("default", "avx2" or "avx512": the machine's best that
// ATEN_CPU_CAPABILITY allows).
inline std::vector<std::string> all_op_schemas() {
  std::vector<std::string> all = op_schemas(2);
  for (auto& s : op_schemas(3)) all.push_back(std::move(s));
  all.push_back("_cpu_capability() -> str");
  return all;
}

}  // namespace detail
}  // namespace involution
