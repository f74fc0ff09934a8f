// backend/cpu's author op set (ABI 3: mul, sign, clamp, add_scalar, activation forward and
// backward, sgd_momentum_update, lion_update) against hand references in double, edge values
// included (0, -0, NaN, the kinks of ReLU), the activations' backward against central differences
// of their forward, and the argument errors each op names.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

using test::random_values;
using test::tensor_from;
using test::to_vector;

class AuthorOps : public ::testing::Test {
 protected:
  std::shared_ptr<Backend> backend_ = test::cpu_backend(2);
  Backend& be() { return *backend_; }
};

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Values with every edge case first, then random ones.
std::vector<float> edge_values() {
  std::vector<float> v = {0.0f, -0.0f, 1.0f, -1.0f, 2.5f, -3.75f, 1e-30f, -1e-30f, 40.0f, -40.0f};
  const std::vector<float> r = random_values(54, 77, 4.0f);
  v.insert(v.end(), r.begin(), r.end());
  return v;  // 64 values
}

void expect_near_all(const std::vector<float>& got, const std::vector<double>& want, double tol,
                     const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << what << " [" << i << "]";
  }
}

TEST_F(AuthorOps, MulSignClampAddScalarMatchTheirFormulas) {
  const std::vector<float> a = edge_values(), b = random_values(64, 78, 2.0f);
  Tensor ta = tensor_from(be(), a, {8, 8}), tb = tensor_from(be(), b, {8, 8});
  Tensor out = be().empty({8, 8});
  be().mul(out, ta, tb);
  std::vector<double> want(64);
  for (size_t i = 0; i < 64; ++i) want[i] = double(a[i]) * b[i];
  expect_near_all(to_vector(be(), out), want, 1e-7, "mul");

  be().sign(out, ta);
  const std::vector<float> s = to_vector(be(), out);
  for (size_t i = 0; i < 64; ++i) {
    EXPECT_EQ(s[i], a[i] > 0 ? 1.0f : (a[i] < 0 ? -1.0f : 0.0f)) << "sign of " << a[i];
  }
  EXPECT_FALSE(std::signbit(s[1]) && s[1] != 0.0f);

  be().clamp(out, ta, -1.5f, 2.0f);
  const std::vector<float> c = to_vector(be(), out);
  for (size_t i = 0; i < 64; ++i) EXPECT_EQ(c[i], std::min(std::max(a[i], -1.5f), 2.0f)) << i;

  be().add_scalar(out, ta, 0.25f);
  for (size_t i = 0; i < 64; ++i) want[i] = double(a[i]) + 0.25;
  expect_near_all(to_vector(be(), out), want, 1e-7, "add_scalar");

  // In place (out aliases the input) gives the same result.
  Tensor inplace = tensor_from(be(), a, {64});
  be().add_scalar(inplace, inplace, 0.25f);
  expect_near_all(to_vector(be(), inplace), want, 1e-7, "add_scalar in place");
}

TEST_F(AuthorOps, NaNStaysNaNThroughSignAndClamp) {
  Tensor x = tensor_from(be(), {kNaN, 1.0f}, {2});
  Tensor out = be().empty({2});
  be().sign(out, x);
  EXPECT_TRUE(std::isnan(to_vector(be(), out)[0]));
  be().clamp(out, x, -1.0f, 1.0f);
  EXPECT_TRUE(std::isnan(to_vector(be(), out)[0]));
}

double activation_ref(Activation act, double x) {
  switch (act) {
    case Activation::kRelu:
      return x > 0 ? x : 0;
    case Activation::kGelu:
      return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0)));
    case Activation::kSilu:
      return x / (1 + std::exp(-x));
    case Activation::kReluSquared:
      return x > 0 ? x * x : 0;
  }
  return 0;
}

TEST_F(AuthorOps, ActivationsForwardAndBackward) {
  const std::vector<float> x = edge_values(), dy = random_values(64, 79, 1.5f);
  for (Activation act :
       {Activation::kRelu, Activation::kGelu, Activation::kSilu, Activation::kReluSquared}) {
    const std::string name = "activation " + std::to_string(static_cast<int>(act));
    Tensor tx = tensor_from(be(), x, {64}), y = be().empty({64});
    be().activation_forward(act, tx, y);
    std::vector<double> want(64), dwant(64);
    for (size_t i = 0; i < 64; ++i) {
      want[i] = activation_ref(act, x[i]);
      // Central differences of the reference; within a step of 0 (the kink of ReLU) the exact
      // one-sided values: relu' = [x > 0], relu^2' = 2 max(x, 0), gelu'(0) = silu'(0) = 1/2.
      const double h = 1e-5;
      if (std::abs(x[i]) < 2 * h) {
        const bool relu = act == Activation::kRelu, relu2 = act == Activation::kReluSquared;
        dwant[i] = relu ? (x[i] > 0 ? 1.0 : 0.0) : relu2 ? 2.0 * std::max(0.0f, x[i]) : 0.5;
      } else {
        dwant[i] = (activation_ref(act, x[i] + h) - activation_ref(act, x[i] - h)) / (2 * h);
      }
      dwant[i] *= dy[i];
    }
    expect_near_all(to_vector(be(), y), want, 2e-6, name + " forward");
    Tensor dx = be().empty({64});
    be().activation_backward(act, tensor_from(be(), dy, {64}), tx, dx);
    expect_near_all(to_vector(be(), dx), dwant, 1e-4, name + " backward");
    // dx may alias dy.
    Tensor dyt = tensor_from(be(), dy, {64});
    be().activation_backward(act, dyt, tx, dyt);
    expect_near_all(to_vector(be(), dyt), dwant, 1e-4, name + " backward in place");
  }
}

TEST_F(AuthorOps, SgdMomentumAndLionStepsMatchTheirFormulas) {
  const size_t n = 40;
  const std::vector<float> p0 = random_values(n, 80), m0 = random_values(n, 81, 0.1f);
  MomentumStep step;
  step.lr = 0.05f, step.beta1 = 0.8f, step.beta2 = 0.97f, step.weight_decay = 0.1f;
  step.grad_scale = 0.5f;
  for (bool lion : {false, true}) {
    Tensor p = tensor_from(be(), p0, {n}), m = tensor_from(be(), m0, {n});
    std::vector<double> pr(p0.begin(), p0.end()), mr(m0.begin(), m0.end());
    for (int s = 0; s < 3; ++s) {
      const std::vector<float> g = random_values(n, 90 + s);
      if (lion) {
        be().lion_update(p, tensor_from(be(), g, {n}), m, step);
      } else {
        be().sgd_momentum_update(p, tensor_from(be(), g, {n}), m, step);
      }
      for (size_t i = 0; i < n; ++i) {
        const double gi = step.grad_scale * double(g[i]);
        if (lion) {
          const double c = step.beta1 * mr[i] + (1 - step.beta1) * gi;
          pr[i] -= step.lr * ((c > 0) - (c < 0) + step.weight_decay * pr[i]);
          mr[i] = step.beta2 * mr[i] + (1 - step.beta2) * gi;
        } else {
          mr[i] = step.beta1 * mr[i] + gi;
          pr[i] -= step.lr * (mr[i] + step.weight_decay * pr[i]);
        }
      }
    }
    expect_near_all(to_vector(be(), p), pr, 1e-5, lion ? "lion param" : "sgd param");
    expect_near_all(to_vector(be(), m), mr, 1e-5, lion ? "lion m" : "sgd momentum");
  }
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ShapeError& e) {
    return e.what();
  }
  return "(no ShapeError)";
}

TEST_F(AuthorOps, ArgumentErrorsNameTheOp) {
  Tensor a = be().zeros({4}), b = be().zeros({5}), i = be().zeros({4}, DType::kI32);
  EXPECT_NE(error_of([&] { be().mul(a, a, b); }).find("mul"), std::string::npos);
  EXPECT_NE(error_of([&] { be().sign(a, i); }).find("sign"), std::string::npos);
  EXPECT_NE(error_of([&] { be().clamp(a, a, 1.0f, -1.0f); }).find("must not exceed"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              be().activation_backward(Activation::kRelu, a, a, a);
            }).find("dx may alias dy, not x"),
            std::string::npos);
  EXPECT_NE(error_of([&] { be().lion_update(a, b, a, MomentumStep{}); }).find("lion_update"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              be().activation_forward(static_cast<Activation>(9), a, a);
            }).find("unknown activation"),
            std::string::npos);
}

}  // namespace
}  // namespace nnkit
