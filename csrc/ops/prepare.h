#pragma once
// What every device's kernels do before they run, in one place: check the arguments
// (checks.h), allocate the result, make the operands contiguous and describe the problem as a
// Geometry. Each device then only launches its kernels on (a, b) -> out.

#include "stable_tensor.h"

namespace involution {
namespace detail {

struct Prepared {
  Tensor out;  // the result, allocated like the first operand
  Tensor a;    // contiguous operands: (input, weight), (grad_output, weight) or
  Tensor b;    // (grad_output, input), in the order of the op's arguments
  Geometry g;
  bool work = false;  // false: `out` is already the answer (it is empty, or zero-filled)
};

Prepared prepare_forward(const char* op, int64_t dims, const Tensor& input, const Tensor& weight,
                         const Window& window);

Prepared prepare_backward_input(const char* op, int64_t dims, const Tensor& grad_output,
                                const Tensor& weight, IntList input_size, const Window& window);

Prepared prepare_backward_weight(const char* op, int64_t dims, const Tensor& grad_output,
                                 const Tensor& input, IntList kernel_size, int64_t groups,
                                 const Window& window);

}  // namespace detail
}  // namespace involution
