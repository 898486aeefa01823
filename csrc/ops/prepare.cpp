#include "prepare.h"

#include <ATen/ops/empty.h>

#include "checks.h"

namespace involution {
namespace detail {

namespace {

at::Tensor empty_with_sizes(const std::vector<c10::SymInt>& sizes, const at::Tensor& like) {
  return at::empty(C10_AS_INTARRAYREF_SLOW(sizes), like.options());
}

}  // namespace

Prepared prepare_forward(const char* op, int64_t dims, const at::Tensor& input,
                         const at::Tensor& weight, const Window& window) {
  Prepared p;
  p.out = empty_with_sizes(check_forward(op, dims, input, weight, window), input);
  if (p.out.numel() == 0) return p;
  p.a = input.contiguous();
  p.b = weight.contiguous();
  p.g = make_geometry(dims, p.a.sizes(), p.b.sizes(), window);
  p.work = true;
  return p;
}

Prepared prepare_backward_input(const char* op, int64_t dims, const at::Tensor& grad_output,
                                const at::Tensor& weight, c10::SymIntArrayRef input_size,
                                const Window& window) {
  Prepared p;
  p.out = empty_with_sizes(check_backward_input(op, dims, grad_output, weight, input_size, window),
                           grad_output);
  if (p.out.numel() == 0) return p;
  if (grad_output.numel() == 0) {
    p.out.zero_();
    return p;
  }
  p.a = grad_output.contiguous();
  p.b = weight.contiguous();
  p.g = make_geometry(dims, p.out.sizes(), p.b.sizes(), window);
  p.work = true;
  return p;
}

Prepared prepare_backward_weight(const char* op, int64_t dims, const at::Tensor& grad_output,
                                 const at::Tensor& input, at::IntArrayRef kernel_size,
                                 int64_t groups, const Window& window) {
  Prepared p;
  p.out = empty_with_sizes(
      check_backward_weight(op, dims, grad_output, input, kernel_size, groups, window),
      grad_output);
  if (p.out.numel() == 0) return p;
  if (grad_output.numel() == 0) {
    p.out.zero_();
    return p;
  }
  p.a = grad_output.contiguous();
  p.b = input.contiguous();
  p.g = make_geometry(dims, p.b.sizes(), p.out.sizes(), window);
  p.work = true;
  return p;
}

}  // namespace detail
}  // namespace involution
