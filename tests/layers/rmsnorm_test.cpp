// Purpose: tests of `norm/rmsnorm`: forward against a double reference, backward (dx, dweight)
// against central differences of sum(forward(x) * r), gradient accumulation, option checks, and
// forward_with_residual (the fused add + norm of inference: equal to add then forward, and the
// unfused path in training, whose backward still works).
#include <gtest/gtest.h>

#include <cmath>

#include "layer_test_util.h"
#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

constexpr int64_t kRows = 5;
constexpr int64_t kChannels = 16;
constexpr double kEps = 1e-5;

HostMatrix rmsnorm_reference(const HostMatrix& x, const HostMatrix& weight) {
  HostMatrix y(x.size());
  for (int64_t n = 0; n < kRows; ++n) {
    double mean_square = 0.0;
    for (int64_t c = 0; c < kChannels; ++c)
      mean_square += x[n * kChannels + c] * x[n * kChannels + c];
    const double rstd = 1.0 / std::sqrt(mean_square / kChannels + kEps);
    for (int64_t c = 0; c < kChannels; ++c) {
      y[n * kChannels + c] = x[n * kChannels + c] * rstd * weight[c];
    }
  }
  return y;
}

class RmsNormTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend = cpu_backend();
    ModelDims dims;
    dims.hidden_dim = kChannels;
    norm = create<Norm>("norm", "rmsnorm", {{"eps", "1e-5"}}, dims, backend.get());
    params = init_parameters(*backend, *norm, 11, 0.5f);
    x_host = random_values(kRows * kChannels, 12);
    r_host = random_values(kRows * kChannels, 13);
  }

  std::shared_ptr<Backend> backend;
  std::shared_ptr<Norm> norm;
  std::map<std::string, HostMatrix> params;
  std::vector<float> x_host;
  std::vector<float> r_host;
};

TEST_F(RmsNormTest, ParameterIsAUnitScaleWithoutDecay) {
  ASSERT_EQ(norm->parameters().size(), 1u);
  const Parameter& p = norm->parameters()[0];
  EXPECT_EQ(p.name, "weight");
  EXPECT_EQ(p.shape, Shape({kChannels}));
  EXPECT_EQ(p.init_std, 0.0f);
  EXPECT_EQ(p.init_value, 1.0f);
  EXPECT_FALSE(p.decay);
}

TEST_F(RmsNormTest, ForwardMatchesReference) {
  ForwardContext ctx = make_context(*backend, 1, kRows, false);
  Tensor y = norm->forward(ctx, tensor_from(*backend, x_host, {kRows, kChannels}));
  expect_close(to_vector(*backend, y), rmsnorm_reference(to_double(x_host), params["weight"]), 1e-5,
               1e-5, "y");
}

TEST_F(RmsNormTest, ForwardWithResidualEqualsAddThenForward) {
  const Tensor x = tensor_from(*backend, x_host, {kRows, kChannels});
  const Tensor residual = tensor_from(*backend, r_host, {kRows, kChannels});
  std::vector<float> added(x_host.size());
  for (size_t i = 0; i < added.size(); ++i) added[i] = x_host[i] + r_host[i];
  for (bool training : {false, true}) {
    ForwardContext ctx = make_context(*backend, 1, kRows, training);
    Tensor sum;
    const Tensor y = norm->forward_with_residual(ctx, x, residual, sum);
    EXPECT_EQ(to_vector(*backend, sum), added) << "training " << training;
    const Tensor want = norm->forward(ctx, tensor_from(*backend, added, {kRows, kChannels}));
    EXPECT_EQ(to_vector(*backend, y), to_vector(*backend, want)) << "training " << training;
    EXPECT_EQ(to_vector(*backend, x), x_host) << "x is not written";
  }
  // In training the statistics of the sum are kept: backward runs.
  ForwardContext ctx = make_context(*backend, 1, kRows, true);
  Tensor sum;
  norm->forward_with_residual(ctx, x, residual, sum);
  EXPECT_NO_THROW(norm->backward(ctx, residual));
}

// Objective sum(y * r); FD in double on the reference (eps 1e-5), analytic in fp32.
// Tolerance: abs 1e-4 + rel 1e-3 of the largest expected gradient.
TEST_F(RmsNormTest, BackwardMatchesFiniteDifferences) {
  ForwardContext ctx = make_context(*backend, 1, kRows, true);
  norm->forward(ctx, tensor_from(*backend, x_host, {kRows, kChannels}));
  Tensor dx = norm->backward(ctx, tensor_from(*backend, r_host, {kRows, kChannels}));

  HostMatrix x = to_double(x_host);
  HostMatrix weight = params["weight"];
  const HostMatrix r = to_double(r_host);
  auto objective = [&] { return dot(rmsnorm_reference(x, weight), r); };
  expect_close(to_vector(*backend, dx), numeric_gradient(x, objective), 1e-4, 1e-3, "dx");
  expect_close(grad_of(*backend, *norm, "weight"), numeric_gradient(weight, objective), 1e-4, 1e-3,
               "dweight");
}

TEST_F(RmsNormTest, SecondBackwardAccumulatesWeightGradient) {
  ForwardContext ctx = make_context(*backend, 1, kRows, true);
  norm->forward(ctx, tensor_from(*backend, x_host, {kRows, kChannels}));
  const Tensor dy = tensor_from(*backend, r_host, {kRows, kChannels});
  norm->backward(ctx, dy);
  const std::vector<float> once = grad_of(*backend, *norm, "weight");
  norm->backward(ctx, dy);
  const std::vector<float> twice = grad_of(*backend, *norm, "weight");
  for (size_t i = 0; i < once.size(); ++i) EXPECT_NEAR(twice[i], 2.0f * once[i], 1e-5f);
}

TEST_F(RmsNormTest, BackwardWithoutTrainingForwardThrows) {
  ForwardContext ctx = make_context(*backend, 1, kRows, false);
  const Tensor x = tensor_from(*backend, x_host, {kRows, kChannels});
  norm->forward(ctx, x);
  EXPECT_THROW(norm->backward(ctx, x), Error);
}

TEST(RmsNormOptions, NonPositiveEpsIsRejected) {
  auto backend = cpu_backend();
  ModelDims dims;
  dims.hidden_dim = 8;
  EXPECT_THROW(create<Norm>("norm", "rmsnorm", {{"eps", "0"}}, dims, backend.get()), ConfigError);
}

}  // namespace
}  // namespace nnkit::test
