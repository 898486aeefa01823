// Autograd for the involution2d and involution3d ops (templates over `Dims` spatial axes),
// registered in C++ so C++ and TorchScript callers can train.
// registered in C++ so C++ and TorchScript callers can train.
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

#include "../aten_info.h"
#include "../op_family.h"

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

// Kernel size (K...) and groups of a weight (B, G, K..., O...). Under torch.compile the sizes
// may be symbolic: read just these dims (Tensor::size would guard on every dim) and specialise
// on them, as they are constants of a layer.
template <int64_t Dims>
std::vector<int64_t> kernel_size_of(const at::Tensor& weight) {
  std::vector<int64_t> kernel_size;
  for (int64_t i = 0; i < Dims; ++i) {
    kernel_size.push_back(weight.sym_size(2 + i).guard_int(__FILE__, __LINE__));
  }
  return kernel_size;
}

int64_t groups_of(const at::Tensor& weight) {
  return weight.sym_size(1).guard_int(__FILE__, __LINE__);
}

template <int64_t Dims>
class ForwardFunction : public torch::autograd::Function<ForwardFunction<Dims>> {
 public:
  using Ops = detail::OpFamily<Dims>;

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& weight, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor output = Ops::forward(input, weight, stride, padding, dilation);
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
        grad_input = Ops::backward_input(grad_output, weight, input.sym_sizes().slice(2), p.stride,
                                         p.padding, p.dilation);
      }
      if (ctx->needs_input_grad(1)) {
        grad_weight = Ops::backward_weight(grad_output, input, kernel_size_of<Dims>(weight),
                                           groups_of(weight), p.stride, p.padding, p.dilation);
      }
    }
    return {grad_input, grad_weight, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <int64_t Dims>
class BackwardInputFunction : public torch::autograd::Function<BackwardInputFunction<Dims>> {
 public:
  using Ops = detail::OpFamily<Dims>;

  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& weight, c10::SymIntArrayRef input_size,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor grad_input =
        Ops::backward_input(grad_output, weight, input_size, stride, padding, dilation);
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
        d_grad_output = Ops::forward(a, weight, p.stride, p.padding, p.dilation);
      }
      if (ctx->needs_input_grad(1)) {
        d_weight = Ops::backward_weight(grad_output, a, kernel_size_of<Dims>(weight),
                                        groups_of(weight), p.stride, p.padding, p.dilation);
      }
    }
    return {d_grad_output, d_weight, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

template <int64_t Dims>
class BackwardWeightFunction : public torch::autograd::Function<BackwardWeightFunction<Dims>> {
 public:
  using Ops = detail::OpFamily<Dims>;

  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_output,
                               const at::Tensor& input, at::IntArrayRef kernel_size, int64_t groups,
                               at::IntArrayRef stride, at::IntArrayRef padding,
                               at::IntArrayRef dilation) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor grad_weight =
        Ops::backward_weight(grad_output, input, kernel_size, groups, stride, padding, dilation);
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
        d_grad_output = Ops::forward(input, b, p.stride, p.padding, p.dilation);
      }
      if (ctx->needs_input_grad(1)) {
        d_input = Ops::backward_input(grad_output, b, input.sym_sizes().slice(2), p.stride,
                                      p.padding, p.dilation);
      }
    }
    return {d_grad_output, d_input,      at::Tensor(), at::Tensor(),
            at::Tensor(),  at::Tensor(), at::Tensor()};
  }
};

template <int64_t Dims>
at::Tensor forward_autograd(const at::Tensor& input, const at::Tensor& weight,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation) {
  detail::check_defined(detail::OpFamily<Dims>::name, "input", input);
  detail::check_defined(detail::OpFamily<Dims>::name, "weight", weight);
  return ForwardFunction<Dims>::apply(input, weight, stride, padding, dilation)[0];
}

template <int64_t Dims>
at::Tensor backward_input_autograd(const at::Tensor& grad_output, const at::Tensor& weight,
                                   c10::SymIntArrayRef input_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  detail::check_defined(detail::OpFamily<Dims>::backward_input_name, "grad_output", grad_output);
  detail::check_defined(detail::OpFamily<Dims>::backward_input_name, "weight", weight);
  return BackwardInputFunction<Dims>::apply(grad_output, weight, input_size, stride, padding,
                                            dilation)[0];
}

template <int64_t Dims>
at::Tensor backward_weight_autograd(const at::Tensor& grad_output, const at::Tensor& input,
                                    at::IntArrayRef kernel_size, int64_t groups,
                                    at::IntArrayRef stride, at::IntArrayRef padding,
                                    at::IntArrayRef dilation) {
  detail::check_defined(detail::OpFamily<Dims>::backward_weight_name, "grad_output", grad_output);
  detail::check_defined(detail::OpFamily<Dims>::backward_weight_name, "input", input);
  return BackwardWeightFunction<Dims>::apply(grad_output, input, kernel_size, groups, stride,
                                             padding, dilation)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(involution, Autograd, m) {
  m.impl("involution2d", TORCH_FN(forward_autograd<2>));
  m.impl("_involution2d_backward_input", TORCH_FN(backward_input_autograd<2>));
  m.impl("_involution2d_backward_weight", TORCH_FN(backward_weight_autograd<2>));
  m.impl("involution3d", TORCH_FN(forward_autograd<3>));
  m.impl("_involution3d_backward_input", TORCH_FN(backward_input_autograd<3>));
  m.impl("_involution3d_backward_weight", TORCH_FN(backward_weight_autograd<3>));
}

}  // namespace involution
