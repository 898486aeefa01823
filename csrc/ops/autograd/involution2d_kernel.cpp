// Autograd for the involution2d ops, registered in C++ so C++ and TorchScript callers can train.
//
// Y = F(X, W) is bilinear, so with T(X, W, dY) = <F(X, W), dY> all three ops are contractions of
// one trilinear form:
//   forward          F(X, W)            -> Y
//   backward_input   GI(dY, W)          -> dX   with <GI(dY, W), A> = T(A, W, dY)
//   backward_weight  GW(dY, X)          -> dW   with <GW(dY, X), B> = T(X, B, dY)
// and the derivatives of each are again these ops:
//   d<GI(dY, W), A>: wrt dY = F(A, W),  wrt W = GW(dY, A)
//   d<GW(dY, X), B>: wrt dY = F(X, B),  wrt X = GI(dY, B)
// Every backward calls the ops through the dispatcher, so derivatives of any order work.

#include <torch/autograd.h>
#include <torch/library.h>

#include <involution/involution.h>

namespace involution {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void save_params(AutogradContext* ctx, at::IntArrayRef stride, at::IntArrayRef padding,
                 at::IntArrayRef dilation) {
  ctx->saved_data["stride"] = stride.vec();
  ctx->saved_data["padding"] = padding.vec();
  ctx->saved_data["dilation"] = dilation.vec();
}

struct Params {
  std::vector<int64_t> stride, padding, dilation;
};

Params load_params(AutogradContext* ctx) {
  return {ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
          ctx->saved_data["dilation"].toIntVector()};
}

// Kernel size (KH, KW) and groups of a weight (B, G, KH, KW, OH, OW). Under torch.compile the
// sizes may be symbolic: read just these dims (Tensor::size would guard on every dim) and
// specialise on them, as they are constants of a layer.
std::vector<int64_t> kernel_size_of(const at::Tensor& weight) {
  return {weight.sym_size(2).guard_int(__FILE__, __LINE__),
          weight.sym_size(3).guard_int(__FILE__, __LINE__)};
}

int64_t groups_of(const at::Tensor& weight) {
  return weight.sym_size(1).guard_int(__FILE__, __LINE__);
}

class Involution2dFunction : public torch::autograd::Function<Involution2dFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = involution2d(input, weight, stride, padding, dilation);
    ctx->save_for_backward({input, weight});
    save_params(ctx, stride, padding, dilation);
    return {output};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& input = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& grad_output = grads[0];
    const Params p = load_params(ctx);
    at::Tensor grad_input, grad_weight;
    if (grad_output.defined()) {
      if (ctx->needs_input_grad(0)) {
        grad_input = detail::involution2d_backward_input(
            grad_output, weight, input.sym_sizes().slice(2), p.stride, p.padding, p.dilation);
      }
      if (ctx->needs_input_grad(1)) {
        grad_weight = detail::involution2d_backward_weight(grad_output, input,
                                                           kernel_size_of(weight), groups_of(weight),
                                                           p.stride, p.padding, p.dilation);
      }
    }
    return {grad_input, grad_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class Involution2dBackwardInputFunction
    : public torch::autograd::Function<Involution2dBackwardInputFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& weight, c10::SymIntArrayRef input_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor grad_input = detail::involution2d_backward_input(grad_output, weight, input_size,
                                                                stride, padding, dilation);
    ctx->save_for_backward({grad_output, weight});
    save_params(ctx, stride, padding, dilation);
    return {grad_input};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& weight = saved[1];
    const at::Tensor& a = grads[0];  // gradient of the loss with respect to grad_input
    const Params p = load_params(ctx);
    at::Tensor d_grad_output, d_weight;
    if (a.defined()) {
      if (ctx->needs_input_grad(0)) {
        d_grad_output = involution2d(a, weight, p.stride, p.padding, p.dilation);
      }
      if (ctx->needs_input_grad(1)) {
        d_weight = detail::involution2d_backward_weight(grad_output, a, kernel_size_of(weight),
                                                        groups_of(weight), p.stride, p.padding,
                                                        p.dilation);
      }
    }
    return {d_grad_output, d_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class Involution2dBackwardWeightFunction
    : public torch::autograd::Function<Involution2dBackwardWeightFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, at::IntArrayRef kernel_size,
                               int64_t groups, at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor grad_weight = detail::involution2d_backward_weight(
        grad_output, input, kernel_size, groups, stride, padding, dilation);
    ctx->save_for_backward({grad_output, input});
    save_params(ctx, stride, padding, dilation);
    return {grad_weight};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = saved[0];
    const at::Tensor& input = saved[1];
    const at::Tensor& b = grads[0];  // gradient of the loss with respect to grad_weight
    const Params p = load_params(ctx);
    at::Tensor d_grad_output, d_input;
    if (b.defined()) {
      if (ctx->needs_input_grad(0)) {
        d_grad_output = involution2d(input, b, p.stride, p.padding, p.dilation);
      }
      if (ctx->needs_input_grad(1)) {
        d_input = detail::involution2d_backward_input(grad_output, b, input.sym_sizes().slice(2),
                                                      p.stride, p.padding, p.dilation);
      }
    }
    return {d_grad_output, d_input, at::Tensor(), at::Tensor(),
            at::Tensor(),  at::Tensor(), at::Tensor()};
  }
};

at::Tensor involution2d_autograd(const at::Tensor& input, const at::Tensor& weight,
                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                 at::IntArrayRef dilation) {
  return Involution2dFunction::apply(input, weight, stride, padding, dilation)[0];
}

at::Tensor involution2d_backward_input_autograd(const at::Tensor& grad_output,
                                                const at::Tensor& weight,
                                                c10::SymIntArrayRef input_size,
                                                at::IntArrayRef stride, at::IntArrayRef padding,
                                                at::IntArrayRef dilation) {
  return Involution2dBackwardInputFunction::apply(grad_output, weight, input_size, stride,
                                                  padding, dilation)[0];
}

at::Tensor involution2d_backward_weight_autograd(const at::Tensor& grad_output,
                                                 const at::Tensor& input,
                                                 at::IntArrayRef kernel_size, int64_t groups,
                                                 at::IntArrayRef stride, at::IntArrayRef padding,
                                                 at::IntArrayRef dilation) {
  return Involution2dBackwardWeightFunction::apply(grad_output, input, kernel_size, groups,
                                                   stride, padding, dilation)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, Autograd, m) {
  m.impl("involution2d", TORCH_FN(involution2d_autograd));
  m.impl("_involution2d_backward_input", TORCH_FN(involution2d_backward_input_autograd));
  m.impl("_involution2d_backward_weight", TORCH_FN(involution2d_backward_weight_autograd));
}

}  // namespace involution
