#include "prepare.h"

namespace involution {
namespace detail {

Prepared prepare_forward(const char* op, int64_t dims, const Tensor& input, const Tensor& weight,
                         const Window& window) {
  Prepared p;
  const auto sizes = check_forward(op, dims, info(input), info(weight), window);
  p.out = allocate(sizes, input.scalar_type(), input);
  if (p.out.numel() == 0) return p;
  p.a = dense(input);
  p.b = dense(weight);
  p.g = make_geometry(dims, p.a.sizes(), p.b.sizes(), window);
  p.work = true;
  return p;
}

Prepared prepare_backward_input(const char* op, int64_t dims, const Tensor& grad_output,
                                const Tensor& weight, IntList input_size, const Window& window) {
  Prepared p;
  const auto sizes =
      check_backward_input(op, dims, info(grad_output), info(weight), input_size, window);
  p.out = allocate(sizes, grad_output.scalar_type(), grad_output);
  if (p.out.numel() == 0) return p;
  if (grad_output.numel() == 0) {
    torch::stable::zero_(p.out);
    return p;
  }
  p.a = dense(grad_output);
  p.b = dense(weight);
  p.g = make_geometry(dims, p.out.sizes(), p.b.sizes(), window);
  p.work = true;
  return p;
}

Prepared prepare_backward_weight(const char* op, int64_t dims, const Tensor& grad_output,
                                 const Tensor& input, IntList kernel_size, int64_t groups,
                                 const Window& window) {
  Prepared p;
  const auto sizes =
      check_backward_weight(op, dims, info(grad_output), info(input), kernel_size, groups, window);
  p.out = allocate(sizes, grad_output.scalar_type(), grad_output);
  if (p.out.numel() == 0) return p;
  if (grad_output.numel() == 0) {
    torch::stable::zero_(p.out);
    return p;
  }
  p.a = dense(grad_output);
  p.b = dense(input);
  p.g = make_geometry(dims, p.b.sizes(), p.out.sizes(), window);
  p.work = true;
  return p;
}

}  // namespace detail
}  // namespace involution
