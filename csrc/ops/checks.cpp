#include "checks.h"

#include <initializer_list>
#include <string>
#include <utility>

#ifndef INVOLUTION_STABLE_ABI
#include <c10/core/SymInt.h>
#endif

#include "dtypes.h"

namespace involution {
namespace detail {

namespace {

const char* const kAxisNames[2][3] = {{"H", "W", ""}, {"D", "H", "W"}};

// A concrete size, or nullopt for a symbolic one.
std::optional<int64_t> concrete(int64_t v) { return v; }
#ifndef INVOLUTION_STABLE_ABI
std::optional<int64_t> concrete(const c10::SymInt& v) { return v.maybe_as_int(); }
#endif

template <typename Int>
std::vector<Int> slice(const std::vector<Int>& v, size_t begin, size_t end) {
  return std::vector<Int>(v.begin() + begin, v.begin() + end);
}

template <typename Int>
std::vector<Int> slice(const std::vector<Int>& v, size_t begin) {
  return slice(v, begin, v.size());
}

template <typename Int>
std::vector<Int> to_sizes(IntList list) {
  std::vector<Int> v;
  for (const int64_t x : list) v.emplace_back(x);
  return v;
}

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
  const IntList stride = window.stride, padding = window.padding, dilation = window.dilation;
  const std::pair<const char*, IntList> params[] = {
      {"stride", stride}, {"padding", padding}, {"dilation", dilation}};
  for (const auto& [name, value] : params) {
    INVOLUTION_CHECK(static_cast<int64_t>(value.size()) == dims, op, ": expected ", name,
                     " to have ", dims, " elements (one per spatial axis), but got ", value.size(),
                     ": ", value);
  }
  for (int64_t i = 0; i < dims; ++i) {
    INVOLUTION_CHECK(stride[i] >= 1, op, ": expected stride >= 1 on every axis, but got stride ",
                     stride);
    INVOLUTION_CHECK(dilation[i] >= 1, op,
                     ": expected dilation >= 1 on every axis, but got dilation ", dilation);
    INVOLUTION_CHECK(padding[i] >= 0, op, ": expected padding >= 0 on every axis, but got padding ",
                     padding);
  }
}

template <typename Int>
void check_tensor(const char* op, const char* name, const TensorInfo<Int>& t, int64_t ndim,
                  const std::string& expected_layout) {
  check_defined(op, name, t.defined);
  INVOLUTION_CHECK(t.dim() == ndim, op, ": expected ", name, " to be a ", ndim, "-D tensor ",
                   expected_layout, ", but got a ", t.dim(), "-D tensor of shape ", t.sizes);
  INVOLUTION_CHECK(is_supported_dtype(t.dtype), op, ": expected ", name,
                   " to have a floating-point dtype (", kSupportedDtypes, "), but got ", t.dtype);
}

// The required tensors' presence, first and in argument order: None is named as such, before
// any other check would report something else about another argument.
void check_all_defined(const char* op, std::initializer_list<std::pair<const char*, bool>> args) {
  for (const auto& [name, defined] : args) check_defined(op, name, defined);
}

template <typename Int>
void check_same_kind(const char* op, const char* name_a, const TensorInfo<Int>& a,
                     const char* name_b, const TensorInfo<Int>& b) {
  INVOLUTION_CHECK(a.dtype == b.dtype, op, ": expected ", name_a, " and ", name_b,
                   " to have the same dtype, but got ", name_a, " ", a.dtype, " and ", name_b, " ",
                   b.dtype);
  INVOLUTION_CHECK(a.device == b.device, op, ": expected ", name_a, " and ", name_b,
                   " to be on the same device, but got ", name_a, " on ", a.device, " and ", name_b,
                   " on ", b.device);
}

template <typename Int>
void check_groups(const char* op, const Int& channels, const Int& groups,
                  const char* groups_source) {
  INVOLUTION_CHECK(groups >= 1, op, ": expected at least 1 group, but got ", groups, " (",
                   groups_source, ")");
  INVOLUTION_CHECK(channels % groups == 0, op, ": expected the number of channels (", channels,
                   ") to be divisible by the number of groups (", groups, ", ", groups_source, ")");
}

// Output size per spatial axis: the conv formula. Throws if the dilated kernel does not fit in
// the padded input (the formula would then give a size < 1), or if a term of the formula does
// not fit in int64 (it would wrap around and give a wrong size). Symbolic input sizes (under
// torch.compile/torch.export) are checked when they become concrete, in the real kernels.
template <typename Int>
std::vector<Int> output_size(const char* op, int64_t dims, const std::vector<Int>& in,
                             const std::vector<Int>& kernel, const Window& window) {
  const IntList stride = window.stride, padding = window.padding, dilation = window.dilation;
  std::vector<Int> out;
  out.reserve(dims);
  for (int64_t i = 0; i < dims; ++i) {
    INVOLUTION_CHECK(kernel[i] >= 1, op, ": expected a kernel size >= 1 on every axis, but got ",
                     kernel);
    const char* axis = kAxisNames[dims - 2][i];
    auto overflow = [&](const char* what) {
      fail(op, ": the size overflows: ", what, " along axis ", axis,
           " does not fit in a 64-bit integer (input size ", in, ", kernel size ", kernel,
           ", padding ", padding, ", dilation ", dilation, ")");
    };
    // extent = (K - 1) * dilation + 1 and 2 * padding, in checked arithmetic when concrete.
    Int extent, padded;
    int64_t twice_p = 0;
    if (__builtin_mul_overflow(padding[i], int64_t{2}, &twice_p)) overflow("2 * padding");
    if (const auto k = concrete(kernel[i])) {
      int64_t span = 0, e = 0;
      if (__builtin_mul_overflow(*k - 1, dilation[i], &span) ||
          __builtin_add_overflow(span, int64_t{1}, &e)) {
        overflow("the dilated kernel size (K - 1) * dilation + 1");
      }
      extent = e;
    } else {
      extent = (kernel[i] - 1) * dilation[i] + 1;
    }
    if (const auto n = concrete(in[i])) {
      int64_t sum = 0;
      if (__builtin_add_overflow(*n, twice_p, &sum)) {
        overflow("the padded input size I + 2 * padding");
      }
      padded = sum;
    } else {
      padded = in[i] + twice_p;
    }
    INVOLUTION_CHECK(padded >= extent, op, ": the dilated kernel (size ", kernel, ", dilation ",
                     dilation, ") is larger than the padded input (size ", in, ", padding ",
                     padding, ") along axis ", axis, ": output size would be < 1");
    out.push_back((padded - extent) / stride[i] + 1);
  }
  return out;
}

// Checks that `actual` equals `expected` on every axis, with a message that says where the
// expected size came from.
template <typename Int>
void check_output_size(const char* op, const char* what, const std::vector<Int>& actual,
                       const std::vector<Int>& expected, const std::vector<Int>& in,
                       const std::vector<Int>& kernel, const Window& window) {
  bool same = actual.size() == expected.size();
  for (size_t i = 0; same && i < expected.size(); ++i) same = actual[i] == expected[i];
  INVOLUTION_CHECK(same, op, ": ", what, " ", actual, " does not match the output size ", expected,
                   " given by input size ", in, ", kernel size ", kernel, ", stride ",
                   window.stride, ", padding ", window.padding, " and dilation ", window.dilation,
                   " (O = (I + 2*padding - dilation*(K-1) - 1) // stride + 1)");
}

}  // namespace

template <typename Int>
std::vector<Int> check_forward(const char* op, int64_t dims, const TensorInfo<Int>& input,
                               const TensorInfo<Int>& weight, const Window& window) {
  check_all_defined(op, {{"input", input.defined}, {"weight", weight.defined}});
  check_tensor(op, "input", input, dims + 2, features_layout(dims, ""));
  check_tensor(op, "weight", weight, 2 * dims + 2, weight_layout(dims));
  check_same_kind(op, "input", input, "weight", weight);
  check_window(op, dims, window);

  const auto& x = input.sizes;
  const auto& w = weight.sizes;
  INVOLUTION_CHECK(w[0] == x[0], op,
                   ": expected weight and input to have the same batch size, but got "
                   "weight.size(0) = ",
                   w[0], " and input.size(0) = ", x[0]);
  check_groups(op, x[1], w[1], "weight.size(1)");
  const auto in = slice(x, 2);
  const auto kernel = slice(w, 2, 2 + dims);
  const auto out = output_size(op, dims, in, kernel, window);
  check_output_size(op, "weight's output size", slice(w, 2 + dims), out, in, kernel, window);

  std::vector<Int> sizes = {x[0], x[1]};
  sizes.insert(sizes.end(), out.begin(), out.end());
  return sizes;
}

template <typename Int>
std::vector<Int> check_backward_input(const char* op, int64_t dims,
                                      const TensorInfo<Int>& grad_output,
                                      const TensorInfo<Int>& weight,
                                      torch::headeronly::HeaderOnlyArrayRef<Int> input_size_ref,
                                      const Window& window) {
  check_all_defined(op, {{"grad_output", grad_output.defined}, {"weight", weight.defined}});
  check_tensor(op, "grad_output", grad_output, dims + 2, features_layout(dims, "O"));
  check_tensor(op, "weight", weight, 2 * dims + 2, weight_layout(dims));
  check_same_kind(op, "grad_output", grad_output, "weight", weight);
  check_window(op, dims, window);
  const std::vector<Int> input_size(input_size_ref.begin(), input_size_ref.end());
  INVOLUTION_CHECK(static_cast<int64_t>(input_size.size()) == dims, op,
                   ": expected input_size to have ", dims, " elements, but got ", input_size);
  for (const auto& s : input_size) {
    INVOLUTION_CHECK(s >= 0, op, ": expected input_size >= 0, but got ", input_size);
  }

  const auto& gy = grad_output.sizes;
  const auto& w = weight.sizes;
  INVOLUTION_CHECK(w[0] == gy[0], op,
                   ": expected weight and grad_output to have the same batch size, but got "
                   "weight.size(0) = ",
                   w[0], " and grad_output.size(0) = ", gy[0]);
  check_groups(op, gy[1], w[1], "weight.size(1)");
  const auto kernel = slice(w, 2, 2 + dims);
  const auto out = output_size(op, dims, input_size, kernel, window);
  check_output_size(op, "weight's output size", slice(w, 2 + dims), out, input_size, kernel,
                    window);
  check_output_size(op, "grad_output's spatial size", slice(gy, 2), out, input_size, kernel,
                    window);

  std::vector<Int> sizes = {gy[0], gy[1]};
  sizes.insert(sizes.end(), input_size.begin(), input_size.end());
  return sizes;
}

template <typename Int>
std::vector<Int> check_backward_weight(const char* op, int64_t dims,
                                       const TensorInfo<Int>& grad_output,
                                       const TensorInfo<Int>& input, IntList kernel_size,
                                       int64_t groups, const Window& window) {
  check_all_defined(op, {{"grad_output", grad_output.defined}, {"input", input.defined}});
  check_tensor(op, "grad_output", grad_output, dims + 2, features_layout(dims, "O"));
  check_tensor(op, "input", input, dims + 2, features_layout(dims, ""));
  check_same_kind(op, "grad_output", grad_output, "input", input);
  check_window(op, dims, window);
  INVOLUTION_CHECK(static_cast<int64_t>(kernel_size.size()) == dims, op,
                   ": expected kernel_size to have ", dims, " elements, but got ", kernel_size);

  const auto& gy = grad_output.sizes;
  const auto& x = input.sizes;
  INVOLUTION_CHECK(gy[0] == x[0] && gy[1] == x[1], op,
                   ": expected grad_output and input to have the same batch size and channels, "
                   "but got grad_output of shape ",
                   gy, " and input of shape ", x);
  check_groups(op, x[1], Int(groups), "groups");
  const auto in = slice(x, 2);
  const auto kernel = to_sizes<Int>(kernel_size);
  const auto out = output_size(op, dims, in, kernel, window);
  check_output_size(op, "grad_output's spatial size", slice(gy, 2), out, in, kernel, window);

  std::vector<Int> sizes = {x[0], Int(groups)};
  sizes.insert(sizes.end(), kernel.begin(), kernel.end());
  sizes.insert(sizes.end(), out.begin(), out.end());
  return sizes;
}

template <typename Int>
FusedSizes<Int> check_fused_forward(const char* op, int64_t dims, const TensorInfo<Int>& input,
                                    const TensorInfo<Int>& reduced,
                                    const TensorInfo<Int>& span_weight,
                                    const TensorInfo<Int>& span_bias, IntList kernel_size,
                                    const Window& window) {
  check_all_defined(op, {{"input", input.defined},
                         {"reduced", reduced.defined},
                         {"span_weight", span_weight.defined}});
  check_tensor(op, "input", input, dims + 2, features_layout(dims, ""));
  check_tensor(op, "reduced", reduced, dims + 2, axes_layout(dims, "R", {"O"}));
  std::string span_layout = "(G * taps, R";
  for (int64_t i = 0; i < dims; ++i) span_layout += ", 1";
  span_layout += ")";
  check_tensor(op, "span_weight", span_weight, dims + 2, span_layout);
  check_same_kind(op, "input", input, "reduced", reduced);
  check_same_kind(op, "input", input, "span_weight", span_weight);
  check_window(op, dims, window);
  INVOLUTION_CHECK(
      static_cast<int64_t>(kernel_size.size()) == dims, op, ": expected kernel_size to have ", dims,
      " elements (one per spatial axis), but got ", kernel_size.size(), ": ", kernel_size);

  const auto& x = input.sizes;
  const auto& z = reduced.sizes;
  const auto& s = span_weight.sizes;
  INVOLUTION_CHECK(z[0] == x[0], op,
                   ": expected reduced and input to have the same batch size, but got "
                   "reduced.size(0) = ",
                   z[0], " and input.size(0) = ", x[0]);
  bool unit = true;
  for (int64_t i = 0; i < dims; ++i) unit = unit && s[2 + i] == 1;
  INVOLUTION_CHECK(unit, op, ": expected span_weight to be the weight of a 1x1 convolution ",
                   span_layout, ", but got shape ", s);
  INVOLUTION_CHECK(s[1] == z[1], op,
                   ": expected span_weight.size(1) to equal the number of reduced channels R = "
                   "reduced.size(1) = ",
                   z[1], ", but got span_weight of shape ", s);
  Int taps = 1;
  for (const int64_t k : kernel_size) {
    INVOLUTION_CHECK(k >= 1, op, ": expected a kernel size >= 1 on every axis, but got ",
                     kernel_size);
    taps = taps * k;
  }
  INVOLUTION_CHECK(s[0] >= taps && s[0] % taps == 0, op,
                   ": expected span_weight.size(0) to be a positive multiple of the number of "
                   "taps (",
                   taps, " for kernel size ", kernel_size,
                   "): G * taps for G groups, but got span_weight of shape ", s);
  const Int groups = s[0] / taps;
  check_groups(op, x[1], groups, "span_weight.size(0) / taps");
  if (span_bias.defined) {
    INVOLUTION_CHECK(span_bias.dim() == 1 && span_bias.sizes[0] == s[0], op,
                     ": expected span_bias to be a 1-D tensor of span_weight.size(0) = ", s[0],
                     " elements (or None), but got shape ", span_bias.sizes);
    check_same_kind(op, "input", input, "span_bias", span_bias);
  }
  const auto in = slice(x, 2);
  const auto kernel = to_sizes<Int>(kernel_size);
  const auto out = output_size(op, dims, in, kernel, window);
  check_output_size(op, "reduced's spatial size", slice(z, 2), out, in, kernel, window);

  std::vector<Int> sizes = {x[0], x[1]};
  sizes.insert(sizes.end(), out.begin(), out.end());
  return {sizes, groups};
}

template <typename Int>
FusedSizes<Int> check_fused_backward(const char* op, int64_t dims,
                                     const TensorInfo<Int>& grad_output,
                                     const TensorInfo<Int>& input, const TensorInfo<Int>& reduced,
                                     const TensorInfo<Int>& span_weight,
                                     const TensorInfo<Int>& span_bias, IntList kernel_size,
                                     const Window& window) {
  check_all_defined(op, {{"grad_output", grad_output.defined},
                         {"input", input.defined},
                         {"reduced", reduced.defined},
                         {"span_weight", span_weight.defined}});
  auto sizes =
      check_fused_forward(op, dims, input, reduced, span_weight, span_bias, kernel_size, window);
  check_tensor(op, "grad_output", grad_output, dims + 2, features_layout(dims, "O"));
  check_same_kind(op, "grad_output", grad_output, "input", input);
  const auto& gy = grad_output.sizes;
  bool same = true;
  for (size_t i = 0; i < sizes.output.size(); ++i) same = same && gy[i] == sizes.output[i];
  INVOLUTION_CHECK(same, op, ": expected grad_output of shape ", sizes.output,
                   " (the output's), but got ", gy);
  return sizes;
}

#define INVOLUTION_INSTANTIATE_CHECKS(Int)                                                      \
  template std::vector<Int> check_forward(const char*, int64_t, const TensorInfo<Int>&,         \
                                          const TensorInfo<Int>&, const Window&);               \
  template std::vector<Int> check_backward_input(                                               \
      const char*, int64_t, const TensorInfo<Int>&, const TensorInfo<Int>&,                     \
      torch::headeronly::HeaderOnlyArrayRef<Int>, const Window&);                               \
  template std::vector<Int> check_backward_weight(const char*, int64_t, const TensorInfo<Int>&, \
                                                  const TensorInfo<Int>&, IntList, int64_t,     \
                                                  const Window&);                               \
  template FusedSizes<Int> check_fused_forward(const char*, int64_t, const TensorInfo<Int>&,    \
                                               const TensorInfo<Int>&, const TensorInfo<Int>&,  \
                                               const TensorInfo<Int>&, IntList, const Window&); \
  template FusedSizes<Int> check_fused_backward(const char*, int64_t, const TensorInfo<Int>&,   \
                                                const TensorInfo<Int>&, const TensorInfo<Int>&, \
                                                const TensorInfo<Int>&, const TensorInfo<Int>&, \
                                                IntList, const Window&);

INVOLUTION_INSTANTIATE_CHECKS(int64_t)
#ifndef INVOLUTION_STABLE_ABI
INVOLUTION_INSTANTIATE_CHECKS(c10::SymInt)
#endif

Geometry make_fused_geometry(int64_t dims, IntList input, IntList output, IntList kernel_size,
                             int64_t groups, const Window& window) {
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

Geometry make_geometry(int64_t dims, IntList features, IntList weight_sizes, const Window& window) {
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
