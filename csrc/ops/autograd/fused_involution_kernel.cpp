// Autograd for fused_involution2d and fused_involution3d, registered in C++ so C++ and
// TorchScript callers can train.
//
// The forward saves only its inputs (input, reduced, span weight and bias), never the generated
// kernel; the backward op regenerates it. The backward op is itself differentiable: when a
// graph is being recorded (double backward, create_graph=True) it computes the same gradients
// as the composite the fused op equals,
//   W  = conv(reduced, span_weight, span_bias) viewed as (B, G, K..., O...)
//   dX = involution_backward_input(dY, W),  dW = involution_backward_weight(dY, X)
//   d(reduced, span_weight, span_bias) = convolution_backward(dW, reduced, span_weight)
// out of ops that have derivatives of their own; otherwise it runs the fused kernels.

#include <ATen/ops/conv2d.h>
#include <ATen/ops/conv3d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "../aten_info.h"
#include "../op_family.h"

namespace involution {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Params {
  std::vector<int64_t> kernel_size, stride, padding, dilation;
};

void save_params(AutogradContext* ctx, const Params& p) {
  ctx->saved_data["kernel_size"] = p.kernel_size;
  ctx->saved_data["stride"] = p.stride;
  ctx->saved_data["padding"] = p.padding;
  ctx->saved_data["dilation"] = p.dilation;
}

Params load_params(AutogradContext* ctx) {
  return {ctx->saved_data["kernel_size"].toIntVector(), ctx->saved_data["stride"].toIntVector(),
          ctx->saved_data["padding"].toIntVector(), ctx->saved_data["dilation"].toIntVector()};
}

template <int64_t Dims>
class FusedFunction : public torch::autograd::Function<FusedFunction<Dims>> {
 public:
  using Ops = detail::OpFamily<Dims>;

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& reduced, const at::Tensor& span_weight,
                               const std::optional<at::Tensor>& span_bias,
                               at::IntArrayRef kernel_size, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output =
        Ops::fused(input, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation);
    ctx->save_for_backward({input, reduced, span_weight, span_bias.value_or(at::Tensor())});
    save_params(ctx, {kernel_size.vec(), stride.vec(), padding.vec(), dilation.vec()});
    return {output};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = grads[0];
    const Params p = load_params(ctx);
    const bool has_bias = saved[3].defined();
    if (!grad_output.defined()) return variable_list(8);
    const std::array<bool, 4> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ctx->needs_input_grad(2),
                                      has_bias && ctx->needs_input_grad(3)};
    auto [gx, gz, gS, gb] =
        Ops::fused_backward(grad_output, saved[0], saved[1], saved[2],
                            has_bias ? std::optional<at::Tensor>(saved[3]) : std::nullopt,
                            p.kernel_size, p.stride, p.padding, p.dilation, mask);
    return {mask[0] ? gx : at::Tensor(),
            mask[1] ? gz : at::Tensor(),
            mask[2] ? gS : at::Tensor(),
            mask[3] ? gb : at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

template <int64_t Dims>
at::Tensor fused_forward_autograd(const at::Tensor& input, const at::Tensor& reduced,
                                  const at::Tensor& span_weight,
                                  const std::optional<at::Tensor>& span_bias,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  const char* op = detail::OpFamily<Dims>::fused_name;
  detail::check_defined(op, "input", input);
  detail::check_defined(op, "reduced", reduced);
  detail::check_defined(op, "span_weight", span_weight);
  return FusedFunction<Dims>::apply(input, reduced, span_weight, span_bias, kernel_size, stride,
                                    padding, dilation)[0];
}

bool records_graph(std::initializer_list<const at::Tensor*> tensors) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : tensors) {
    if (t->defined() && t->requires_grad()) return true;
  }
  return false;
}

// The backward op: the fused kernels, or, while a graph is recorded, the differentiable
// composite described at the top of this file.
template <int64_t Dims>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_backward_autograd(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& reduced,
    const at::Tensor& span_weight, const std::optional<at::Tensor>& span_bias,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, std::array<bool, 4> mask) {
  using Ops = detail::OpFamily<Dims>;
  const char* op = Ops::fused_backward_name;
  detail::check_defined(op, "grad_output", grad_output);
  detail::check_defined(op, "input", input);
  detail::check_defined(op, "reduced", reduced);
  detail::check_defined(op, "span_weight", span_weight);
  const at::Tensor bias = span_bias.has_value() && span_bias->defined() ? *span_bias : at::Tensor();
  if (!records_graph({&grad_output, &input, &reduced, &span_weight, &bias})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return Ops::fused_backward(grad_output, input, reduced, span_weight, span_bias, kernel_size,
                               stride, padding, dilation, mask);
  }
  // Checked here too: the composite's own errors would not name this op's arguments.
  const auto sizes = detail::check_fused_backward(
      op, Dims, detail::info(grad_output), detail::info(input), detail::info(reduced),
      detail::info(span_weight), detail::info(span_bias), kernel_size, {stride, padding, dilation});
  const at::Tensor kernel_flat =
      Dims == 2 ? at::conv2d(reduced, span_weight, bias) : at::conv3d(reduced, span_weight, bias);
  std::vector<c10::SymInt> kernel_shape = {reduced.sym_size(0), sizes.groups};
  for (const int64_t k : kernel_size) kernel_shape.emplace_back(k);
  for (int64_t i = 0; i < Dims; ++i) kernel_shape.push_back(reduced.sym_size(2 + i));
  const at::Tensor W = kernel_flat.view_symint(kernel_shape);
  const auto none = [&] { return at::empty({0}, input.options()); };
  at::Tensor gx = none(), gz = none(), gS = none(), gb = none();
  if (mask[0]) {
    gx = Ops::backward_input(grad_output, W, input.sym_sizes().slice(2), stride, padding, dilation);
  }
  if (mask[1] || mask[2] || (mask[3] && bias.defined())) {
    const at::Tensor dW =
        Ops::backward_weight(grad_output, input, kernel_size,
                             sizes.groups.guard_int(__FILE__, __LINE__), stride, padding, dilation)
            .view_symint(kernel_flat.sym_sizes());
    const std::vector<int64_t> ones(Dims, 1), zeros(Dims, 0);
    std::optional<c10::SymIntArrayRef> bias_sizes;
    std::vector<c10::SymInt> bias_shape;
    if (bias.defined()) {
      bias_shape = bias.sym_sizes().vec();
      bias_sizes = bias_shape;
    }
    auto [d_reduced, d_weight, d_bias] = at::convolution_backward_symint(
        dW, reduced, span_weight, bias_sizes, c10::fromIntArrayRefSlow(ones),
        c10::fromIntArrayRefSlow(zeros), c10::fromIntArrayRefSlow(ones), false,
        c10::fromIntArrayRefSlow(zeros), 1, {mask[1], mask[2], mask[3] && bias.defined()});
    if (mask[1]) gz = d_reduced;
    if (mask[2]) gS = d_weight;
    if (mask[3] && bias.defined()) gb = d_bias;
  }
  return {gx, gz, gS, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, Autograd, m) {
  m.impl("fused_involution2d", TORCH_FN(fused_forward_autograd<2>));
  m.impl("_fused_involution2d_backward", TORCH_FN(fused_backward_autograd<2>));
  m.impl("fused_involution3d", TORCH_FN(fused_forward_autograd<3>));
  m.impl("_fused_involution3d_backward", TORCH_FN(fused_backward_autograd<3>));
}

}  // namespace involution
