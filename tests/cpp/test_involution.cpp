// C++ tests of the public API: values against a loop reference, autograd, error messages.
// Prints "N passed, M failed" and exits non-zero on any failure (run by ctest).

#include <involution/involution.h>
#include <torch/torch.h>

#include <functional>
#include <iostream>
#include <string>
#include <vector>

namespace {

int passed = 0, failed = 0;

void run(const std::string& name, const std::function<void()>& test) {
  try {
    test();
    ++passed;
    std::cout << "PASS " << name << "\n";
  } catch (const std::exception& e) {
    ++failed;
    std::cout << "FAIL " << name << ": " << e.what() << "\n";
  }
}

void expect(bool condition, const std::string& what) {
  if (!condition) throw std::runtime_error(what);
}

void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
  expect(a.sizes() == b.sizes(), what + ": shapes differ");
  const double diff = (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
  expect(diff < 1e-10, what + ": max difference " + std::to_string(diff));
}

struct Geometry2d {
  int64_t s[2], p[2], d[2];
};

// y, and the gradients of sum(y * g), by the definition, in loops.
void reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& g, const Geometry2d& q,
               at::Tensor& y, at::Tensor& gx, at::Tensor& gw) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t G = w.size(1), KH = w.size(2), KW = w.size(3), OH = w.size(4), OW = w.size(5);
  y = torch::zeros({B, C, OH, OW}, x.options());
  gx = torch::zeros_like(x);
  gw = torch::zeros_like(w);
  auto X = x.accessor<double, 4>();
  auto Wt = w.accessor<double, 6>();
  auto Gy = g.accessor<double, 4>();
  auto Y = y.accessor<double, 4>();
  auto GX = gx.accessor<double, 4>();
  auto GW = gw.accessor<double, 6>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t i = 0; i < OH; ++i)
        for (int64_t j = 0; j < OW; ++j)
          for (int64_t u = 0; u < KH; ++u)
            for (int64_t v = 0; v < KW; ++v) {
              const int64_t r = i * q.s[0] - q.p[0] + u * q.d[0];
              const int64_t t = j * q.s[1] - q.p[1] + v * q.d[1];
              if (r < 0 || r >= H || t < 0 || t >= W) continue;
              const int64_t grp = c / (C / G);
              Y[b][c][i][j] += Wt[b][grp][u][v][i][j] * X[b][c][r][t];
              GX[b][c][r][t] += Wt[b][grp][u][v][i][j] * Gy[b][c][i][j];
              GW[b][grp][u][v][i][j] += Gy[b][c][i][j] * X[b][c][r][t];
            }
}

}  // namespace

int main() {
  torch::manual_seed(0);
  const Geometry2d q{{2, 1}, {1, 2}, {1, 2}};
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  // input (2, 6, 7, 9), 3 groups, kernel (3, 2): OH = (7+2-2-1)/2+1 = 4, OW = (9+4-2-1)/1+1 = 11
  auto x = torch::randn({2, 6, 7, 9}, f64);
  auto w = torch::randn({2, 3, 3, 2, 4, 11}, f64);
  auto g = torch::randn({2, 6, 4, 11}, f64);
  at::Tensor y_ref, gx_ref, gw_ref;
  reference(x, w, g, q, y_ref, gx_ref, gw_ref);

  run("version", [] { expect(involution::version() == 100, "version() != 100"); });

  run("forward matches the loop reference",
      [&] { expect_close(involution::involution2d(x, w, q.s, q.p, q.d), y_ref, "forward"); });

  run("autograd from C++ fills both gradients", [&] {
    auto xv = x.clone().requires_grad_();
    auto wv = w.clone().requires_grad_();
    auto y = involution::involution2d(xv, wv, q.s, q.p, q.d);
    (y * g).sum().backward();
    expect(xv.grad().defined() && wv.grad().defined(), "gradients not filled");
    expect_close(xv.grad(), gx_ref, "grad input");
    expect_close(wv.grad(), gw_ref, "grad weight");
  });

  run("float32 and channels_last", [&] {
    auto y =
        involution::involution2d(x.to(torch::kFloat32).contiguous(at::MemoryFormat::ChannelsLast),
                                 w.to(torch::kFloat32), q.s, q.p, q.d);
    const double diff = (y.to(torch::kFloat64) - y_ref).abs().max().item<double>();
    expect(diff < 1e-4, "float32 max difference " + std::to_string(diff));
  });

  run("the op is callable through the dispatcher by name", [&] {
    auto op = c10::Dispatcher::singleton().findSchemaOrThrow("involution::involution2d", "");
    expect(op.schema().arguments().size() == 5, "schema has 5 arguments");
  });

  run("involution3d with depth 1 equals involution2d, gradients included", [&] {
    auto x3 = x.unsqueeze(2).requires_grad_();
    auto w3 = w.unsqueeze(2).unsqueeze(5).requires_grad_();
    auto y = involution::involution3d(x3, w3, {1, q.s[0], q.s[1]}, {0, q.p[0], q.p[1]},
                                      {1, q.d[0], q.d[1]});
    expect_close(y.squeeze(2), y_ref, "involution3d forward");
    (y.squeeze(2) * g).sum().backward();
    expect_close(x3.grad().squeeze(2), gx_ref, "involution3d grad input");
    expect_close(w3.grad().squeeze(5).squeeze(2), gw_ref, "involution3d grad weight");
  });

  auto expect_error = [](const std::function<void()>& call, const std::string& needle) {
    try {
      call();
    } catch (const c10::Error& e) {
      const std::string message = e.what();
      expect(message.find(needle) != std::string::npos,
             "message lacks '" + needle + "': " + message.substr(0, 300));
      return;
    }
    throw std::runtime_error("no c10::Error raised (expected '" + needle + "')");
  };

  run("bad input raises c10::Error naming what was expected", [&] {
    expect_error([&] { involution::involution2d(x.narrow(1, 0, 5), w, q.s, q.p, q.d); },
                 "number of channels (5) to be divisible by the number of groups (3");
    expect_error([&] { involution::involution2d(x, w, {1, 1}, q.p, q.d); },
                 "does not match the output size");
    expect_error([&] { involution::involution2d(x, w.to(torch::kFloat32), q.s, q.p, q.d); },
                 "to have the same dtype");
    expect_error([&] { involution::involution2d(x[0], w, q.s, q.p, q.d); },
                 "expected input to be a 4-D tensor");
    expect_error([&] { involution::involution2d(x, w, {0, 1}, q.p, q.d); }, "expected stride >= 1");
  });

  // The fused op: the kernel w = conv2d(z, S, bias).view(...) generated inside the op.
  // z (2, 5, 4, 11) at the output size, S (3 * 3 * 2, 5, 1, 1): 3 groups, kernel (3, 2).
  auto z = torch::randn({2, 5, 4, 11}, f64);
  auto S = torch::randn({18, 5, 1, 1}, f64);
  auto bias = torch::randn({18}, f64);
  auto composite = [&](const at::Tensor& xi, const at::Tensor& zi, const at::Tensor& Si,
                       const std::optional<at::Tensor>& bi) {
    auto kernel = at::conv2d(zi, Si, bi).view({2, 3, 3, 2, 4, 11});
    return involution::involution2d(xi, kernel, q.s, q.p, q.d);
  };

  run("fused forward equals the span conv followed by the op", [&] {
    expect_close(involution::fused_involution2d(x, z, S, bias, {3, 2}, q.s, q.p, q.d),
                 composite(x, z, S, bias), "fused forward");
    expect_close(involution::fused_involution2d(x, z, S, std::nullopt, {3, 2}, q.s, q.p, q.d),
                 composite(x, z, S, std::nullopt), "fused forward without bias");
  });

  run("fused autograd from C++ fills all four gradients", [&] {
    std::vector<at::Tensor> fused_inputs, composite_inputs;
    for (const auto& t : {x, z, S, bias}) {
      fused_inputs.push_back(t.clone().requires_grad_());
      composite_inputs.push_back(t.clone().requires_grad_());
    }
    const auto& f = fused_inputs;
    const auto& c = composite_inputs;
    (involution::fused_involution2d(f[0], f[1], f[2], f[3], {3, 2}, q.s, q.p, q.d) * g)
        .sum()
        .backward();
    (composite(c[0], c[1], c[2], c[3]) * g).sum().backward();
    const char* names[] = {"input", "reduced", "span_weight", "span_bias"};
    for (int i = 0; i < 4; ++i) {
      expect(f[i].grad().defined(), std::string(names[i]) + " gradient not filled");
      expect_close(f[i].grad(), c[i].grad(), std::string("fused grad ") + names[i]);
    }
  });

  run("fused bad input raises c10::Error naming what was expected", [&] {
    expect_error([&] { involution::fused_involution2d(x, z, S, bias, {3, 4}, q.s, q.p, q.d); },
                 "positive multiple of the number of taps (12");
    expect_error(
        [&] {
          involution::fused_involution2d(x, z.narrow(3, 0, 10), S, bias, {3, 2}, q.s, q.p, q.d);
        },
        "reduced's spatial size");
    expect_error(
        [&] {
          involution::fused_involution2d(x, z, S, bias.narrow(0, 0, 17), {3, 2}, q.s, q.p, q.d);
        },
        "span_bias to be a 1-D tensor of span_weight.size(0) = 18");
  });

  std::cout << passed << " passed, " << failed << " failed\n";
  return failed == 0 ? 0 : 1;
}
