#include "checks.h"

#include <c10/util/Exception.h>
#include <c10/util/safe_numerics.h>

#include <string>

#include "dtypes.h"

namespace involution {
namespace detail {

namespace {

const char* const kAxisNames[2][3] = {{"H", "W", ""}, {"D", "H", "W"}};

// "(B, C, H, W)", "(B, C, OH, OW)" and "(B, G, KH, KW, OH, OW)" and their 3-D forms, for messages.
std::string axes_layout(int64_t dims, const std::string& lead,
                        const std::vector<std::string>& prefixes) {
  std::string s = "(B, " + lead;
  for (const auto& prefix : prefixes) {
    for (int64_t i = 0; i < dims; ++i) s += ", " + prefix + kAxisNames[dims - 2][i];
  }
  return s + ")";
}

std::string features_layout(int64_t dims, const char* prefix) {
  return axes_layout(dims, "C", {prefix});
}

std::string weight_layout(int64_t dims) { return axes_layout(dims, "G", {"K", "O"}); }

void check_window(const char* op, int64_t dims, const Window& window) {
  const at::IntArrayRef stride = window.stride, padding = window.padding,
                        dilation = window.dilation;
  const std::pair<const char*, at::IntArrayRef> params[] = {
      {"stride", stride}, {"padding", padding}, {"dilation", dilation}};
  for (const auto& [name, value] : params) {
    TORCH_CHECK(static_cast<int64_t>(value.size()) == dims, op, ": expected ", name, " to have ",
                dims, " elements (one per spatial axis), but got ", value.size(), ": ", value);
  }
  for (int64_t i = 0; i < dims; ++i) {
    TORCH_CHECK(stride[i] >= 1, op, ": expected stride >= 1 on every axis, but got stride ",
                stride);
    TORCH_CHECK(dilation[i] >= 1, op, ": expected dilation >= 1 on every axis, but got dilation ",
                dilation);
    TORCH_CHECK(padding[i] >= 0, op, ": expected padding >= 0 on every axis, but got padding ",
                padding);
  }
}

void check_tensor(const char* op, const char* name, const at::Tensor& t, int64_t ndim,
                  const std::string& expected_layout) {
  check_defined(op, name, t);
  TORCH_CHECK(t.dim() == ndim, op, ": expected ", name, " to be a ", ndim, "-D tensor ",
              expected_layout, ", but got a ", t.dim(), "-D tensor of shape ", t.sym_sizes());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(is_supported_dtype(dtype), op, ": expected ", name,
              " to have a floating-point dtype (", kSupportedDtypes, "), but got ", dtype);
}

void check_same_kind(const char* op, const char* name_a, const at::Tensor& a, const char* name_b,
                     const at::Tensor& b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_a, " and ", name_b,
              " to have the same dtype, but got ", name_a, " ", a.scalar_type(), " and ", name_b,
              " ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": expected ", name_a, " and ", name_b,
              " to be on the same device, but got ", name_a, " on ", a.device(), " and ", name_b,
              " on ", b.device());
}

void check_groups(const char* op, const c10::SymInt& channels, const c10::SymInt& groups,
                  const char* groups_source) {
  TORCH_CHECK(groups >= 1, op, ": expected at least 1 group, but got ", groups, " (", groups_source,
              ")");
  TORCH_CHECK(channels % groups == 0, op, ": expected the number of channels (", channels,
              ") to be divisible by the number of groups (", groups, ", ", groups_source, ")");
}

// Output size per spatial axis: the conv formula. Throws if the dilated kernel does not fit in
// the padded input (the formula would then give a size < 1), or if a term of the formula does
// not fit in int64 (it would wrap around and give a wrong size). Symbolic input sizes (under
// torch.compile/torch.export) are checked when they become concrete, in the real kernels.
std::vector<c10::SymInt> output_size(const char* op, int64_t dims, c10::SymIntArrayRef in,
                                     c10::SymIntArrayRef kernel, const Window& window) {
  const at::IntArrayRef stride = window.stride, padding = window.padding,
                        dilation = window.dilation;
  std::vector<c10::SymInt> out;
  out.reserve(dims);
  for (int64_t i = 0; i < dims; ++i) {
    TORCH_CHECK(kernel[i] >= 1, op, ": expected a kernel size >= 1 on every axis, but got ",
                kernel);
    const char* axis = kAxisNames[dims - 2][i];
    auto overflow = [&](const char* what) {
      TORCH_CHECK(false, op, ": the size overflows: ", what, " along axis ", axis,
                  " does not fit in a 64-bit integer (input size ", in, ", kernel size ", kernel,
                  ", padding ", padding, ", dilation ", dilation, ")");
    };
    // extent = (K - 1) * dilation + 1 and 2 * padding, in checked arithmetic when concrete.
    c10::SymInt extent, twice_padding;
    int64_t twice_p = 0;
    if (c10::mul_overflows(padding[i], int64_t{2}, &twice_p)) overflow("2 * padding");
    twice_padding = twice_p;
    if (const auto k = kernel[i].maybe_as_int()) {
      int64_t span = 0, e = 0;
      if (c10::mul_overflows(*k - 1, dilation[i], &span) ||
          c10::add_overflows(span, int64_t{1}, &e)) {
        overflow("the dilated kernel size (K - 1) * dilation + 1");
      }
      extent = e;
    } else {
      extent = (kernel[i] - 1) * dilation[i] + 1;
    }
    c10::SymInt padded;
    if (const auto n = in[i].maybe_as_int()) {
      int64_t sum = 0;
      if (c10::add_overflows(*n, twice_p, &sum)) overflow("the padded input size I + 2 * padding");
      padded = sum;
    } else {
      padded = in[i] + twice_padding;
    }
    TORCH_CHECK(padded >= extent, op, ": the dilated kernel (size ", kernel, ", dilation ",
                dilation, ") is larger than the padded input (size ", in, ", padding ", padding,
                ") along axis ", axis, ": output size would be < 1");
    out.push_back((padded - extent) / stride[i] + 1);
  }
  return out;
}

// Checks that `actual` equals `expected` on every axis, with a message that says where the
// expected size came from.
void check_output_size(const char* op, const char* what, c10::SymIntArrayRef actual,
                       const std::vector<c10::SymInt>& expected, c10::SymIntArrayRef in,
                       c10::SymIntArrayRef kernel, const Window& window) {
  const at::IntArrayRef stride = window.stride, padding = window.padding,
                        dilation = window.dilation;
  bool same = actual.size() == expected.size();
  for (size_t i = 0; same && i < expected.size(); ++i) same = actual[i] == expected[i];
  TORCH_CHECK(same, op, ": ", what, " ", actual, " does not match the output size ",
              c10::SymIntArrayRef(expected), " given by input size ", in, ", kernel size ", kernel,
              ", stride ", stride, ", padding ", padding, " and dilation ", dilation,
              " (O = (I + 2*padding - dilation*(K-1) - 1) // stride + 1)");
}

}  // namespace

std::vector<c10::SymInt> check_forward(const char* op, int64_t dims, const at::Tensor& input,
                                       const at::Tensor& weight, const Window& window) {
  check_tensor(op, "input", input, dims + 2, features_layout(dims, ""));
  check_tensor(op, "weight", weight, 2 * dims + 2, weight_layout(dims));
  check_same_kind(op, "input", input, "weight", weight);
  check_window(op, dims, window);

  const auto x = input.sym_sizes();
  const auto w = weight.sym_sizes();
  TORCH_CHECK(w[0] == x[0], op, ": expected weight and input to have the same batch size, but ",
              "got weight.size(0) = ", w[0], " and input.size(0) = ", x[0]);
  check_groups(op, x[1], w[1], "weight.size(1)");
  const auto in = x.slice(2);
  const auto kernel = w.slice(2, dims);
  const auto out = output_size(op, dims, in, kernel, window);
  check_output_size(op, "weight's output size", w.slice(2 + dims), out, in, kernel, window);

  std::vector<c10::SymInt> sizes = {x[0], x[1]};
  sizes.insert(sizes.end(), out.begin(), out.end());
  return sizes;
}

std::vector<c10::SymInt> check_backward_input(const char* op, int64_t dims,
                                              const at::Tensor& grad_output,
                                              const at::Tensor& weight,
                                              c10::SymIntArrayRef input_size,
                                              const Window& window) {
  check_tensor(op, "grad_output", grad_output, dims + 2, features_layout(dims, "O"));
  check_tensor(op, "weight", weight, 2 * dims + 2, weight_layout(dims));
  check_same_kind(op, "grad_output", grad_output, "weight", weight);
  check_window(op, dims, window);
  TORCH_CHECK(static_cast<int64_t>(input_size.size()) == dims, op, ": expected input_size to have ",
              dims, " elements, but got ", input_size);
  for (const auto& s : input_size) {
    TORCH_CHECK(s >= 0, op, ": expected input_size >= 0, but got ", input_size);
  }

  const auto gy = grad_output.sym_sizes();
  const auto w = weight.sym_sizes();
  TORCH_CHECK(w[0] == gy[0], op,
              ": expected weight and grad_output to have the same batch size, but got "
              "weight.size(0) = ",
              w[0], " and grad_output.size(0) = ", gy[0]);
  check_groups(op, gy[1], w[1], "weight.size(1)");
  const auto kernel = w.slice(2, dims);
  const auto out = output_size(op, dims, input_size, kernel, window);
  check_output_size(op, "weight's output size", w.slice(2 + dims), out, input_size, kernel, window);
  check_output_size(op, "grad_output's spatial size", gy.slice(2), out, input_size, kernel, window);

  std::vector<c10::SymInt> sizes = {gy[0], gy[1]};
  sizes.insert(sizes.end(), input_size.begin(), input_size.end());
  return sizes;
}

std::vector<c10::SymInt> check_backward_weight(const char* op, int64_t dims,
                                               const at::Tensor& grad_output,
                                               const at::Tensor& input, at::IntArrayRef kernel_size,
                                               int64_t groups, const Window& window) {
  check_tensor(op, "grad_output", grad_output, dims + 2, features_layout(dims, "O"));
  check_tensor(op, "input", input, dims + 2, features_layout(dims, ""));
  check_same_kind(op, "grad_output", grad_output, "input", input);
  check_window(op, dims, window);
  TORCH_CHECK(static_cast<int64_t>(kernel_size.size()) == dims, op,
              ": expected kernel_size to have ", dims, " elements, but got ", kernel_size);

  const auto gy = grad_output.sym_sizes();
  const auto x = input.sym_sizes();
  TORCH_CHECK(gy[0] == x[0] && gy[1] == x[1], op,
              ": expected grad_output and input to have the same batch size and channels, but "
              "got grad_output of shape ",
              gy, " and input of shape ", x);
  check_groups(op, x[1], c10::SymInt(groups), "groups");
  const auto in = x.slice(2);
  const auto kernel = c10::fromIntArrayRefSlow(kernel_size);
  const auto out = output_size(op, dims, in, kernel, window);
  check_output_size(op, "grad_output's spatial size", gy.slice(2), out, in, kernel, window);

  std::vector<c10::SymInt> sizes = {x[0], c10::SymInt(groups)};
  sizes.insert(sizes.end(), kernel.begin(), kernel.end());
  sizes.insert(sizes.end(), out.begin(), out.end());
  return sizes;
}

FusedSizes check_fused_forward(const char* op, int64_t dims, const at::Tensor& input,
                               const at::Tensor& reduced, const at::Tensor& span_weight,
                               const std::optional<at::Tensor>& span_bias,
                               at::IntArrayRef kernel_size, const Window& window) {
  check_tensor(op, "input", input, dims + 2, features_layout(dims, ""));
  check_tensor(op, "reduced", reduced, dims + 2, axes_layout(dims, "R", {"O"}));
  std::string span_layout = "(G * taps, R";
  for (int64_t i = 0; i < dims; ++i) span_layout += ", 1";
  span_layout += ")";
  check_tensor(op, "span_weight", span_weight, dims + 2, span_layout);
  check_same_kind(op, "input", input, "reduced", reduced);
  check_same_kind(op, "input", input, "span_weight", span_weight);
  check_window(op, dims, window);
  TORCH_CHECK(static_cast<int64_t>(kernel_size.size()) == dims, op,
              ": expected kernel_size to have ", dims, " elements (one per spatial axis), but got ",
              kernel_size.size(), ": ", kernel_size);

  const auto x = input.sym_sizes();
  const auto z = reduced.sym_sizes();
  const auto s = span_weight.sym_sizes();
  TORCH_CHECK(z[0] == x[0], op, ": expected reduced and input to have the same batch size, but ",
              "got reduced.size(0) = ", z[0], " and input.size(0) = ", x[0]);
  bool unit = true;
  for (int64_t i = 0; i < dims; ++i) unit = unit && s[2 + i] == 1;
  TORCH_CHECK(unit, op, ": expected span_weight to be the weight of a 1x1 convolution ",
              span_layout, ", but got shape ", s);
  TORCH_CHECK(s[1] == z[1], op, ": expected span_weight.size(1) to equal the number of reduced ",
              "channels R = reduced.size(1) = ", z[1], ", but got span_weight of shape ", s);
  const auto kernel = c10::fromIntArrayRefSlow(kernel_size);
  c10::SymInt taps = 1;
  for (const auto& k : kernel) {
    TORCH_CHECK(k >= 1, op, ": expected a kernel size >= 1 on every axis, but got ", kernel_size);
    taps = taps * k;
  }
  TORCH_CHECK(s[0] >= taps && s[0] % taps == 0, op, ": expected span_weight.size(0) to be a ",
              "positive multiple of the number of taps (", taps, " for kernel size ", kernel_size,
              "): G * taps for G groups, but got span_weight of shape ", s);
  const c10::SymInt groups = s[0] / taps;
  check_groups(op, x[1], groups, "span_weight.size(0) / taps");
  if (span_bias.has_value() && span_bias->defined()) {
    const at::Tensor& b = *span_bias;
    TORCH_CHECK(b.dim() == 1 && b.sym_size(0) == s[0], op, ": expected span_bias to be a 1-D ",
                "tensor of span_weight.size(0) = ", s[0], " elements (or None), but got shape ",
                b.sym_sizes());
    check_same_kind(op, "input", input, "span_bias", b);
  }
  const auto in = x.slice(2);
  const auto out = output_size(op, dims, in, kernel, window);
  check_output_size(op, "reduced's spatial size", z.slice(2), out, in, kernel, window);

  std::vector<c10::SymInt> sizes = {x[0], x[1]};
  sizes.insert(sizes.end(), out.begin(), out.end());
  return {sizes, groups};
}

FusedSizes check_fused_backward(const char* op, int64_t dims, const at::Tensor& grad_output,
                                const at::Tensor& input, const at::Tensor& reduced,
                                const at::Tensor& span_weight,
                                const std::optional<at::Tensor>& span_bias,
                                at::IntArrayRef kernel_size, const Window& window) {
  auto sizes =
      check_fused_forward(op, dims, input, reduced, span_weight, span_bias, kernel_size, window);
  check_tensor(op, "grad_output", grad_output, dims + 2, features_layout(dims, "O"));
  check_same_kind(op, "grad_output", grad_output, "input", input);
  const auto gy = grad_output.sym_sizes();
  bool same = true;
  for (size_t i = 0; i < sizes.output.size(); ++i) same = same && gy[i] == sizes.output[i];
  TORCH_CHECK(same, op, ": expected grad_output of shape ", c10::SymIntArrayRef(sizes.output),
              " (the output's), but got ", gy);
  return sizes;
}

Geometry make_fused_geometry(int64_t dims, at::IntArrayRef input, at::IntArrayRef output,
                             at::IntArrayRef kernel_size, int64_t groups, const Window& window) {
  Geometry g;
  g.batch = input[0];
  g.channels = input[1];
  g.groups = groups;
  const int64_t first = 3 - dims;
  for (int64_t i = 0; i < dims; ++i) {
    g.in[first + i] = input[2 + i];
    g.kernel[first + i] = kernel_size[i];
    g.out[first + i] = output[2 + i];
    g.stride[first + i] = window.stride[i];
    g.padding[first + i] = window.padding[i];
    g.dilation[first + i] = window.dilation[i];
  }
  return g;
}

Geometry make_geometry(int64_t dims, at::IntArrayRef features, at::IntArrayRef weight_sizes,
                       const Window& window) {
  Geometry g;
  g.batch = features[0];
  g.channels = features[1];
  g.groups = weight_sizes[1];
  const int64_t first = 3 - dims;  // 2-D problems leave the depth axis at its defaults
  for (int64_t i = 0; i < dims; ++i) {
    g.in[first + i] = features[2 + i];
    g.kernel[first + i] = weight_sizes[2 + i];
    g.out[first + i] = weight_sizes[2 + dims + i];
    g.stride[first + i] = window.stride[i];
    g.padding[first + i] = window.padding[i];
    g.dilation[first + i] = window.dilation[i];
  }
  return g;
}

}  // namespace detail
}  // namespace involution
