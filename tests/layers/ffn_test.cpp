// Purpose: tests of `ffn/swiglu`: forward against a double reference, backward (dx and the three
// projection gradients) against central differences of sum(y * r), gradient accumulation.
#include <gtest/gtest.h>

#include <string>

#include "layer_test_util.h"
#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

constexpr int64_t kRows = 6;
constexpr int64_t kChannels = 8;
constexpr int64_t kFfn = 12;

HostMatrix ffn_reference(const HostMatrix& x, std::map<std::string, HostMatrix>& p) {
  const HostMatrix h_gate = matmul_transposed(x, p["gate_proj.weight"], kRows, kChannels, kFfn);
  const HostMatrix h_up = matmul_transposed(x, p["up_proj.weight"], kRows, kChannels, kFfn);
  HostMatrix activated(h_gate.size());
  for (size_t i = 0; i < activated.size(); ++i) activated[i] = silu(h_gate[i]) * h_up[i];
  return matmul_transposed(activated, p["down_proj.weight"], kRows, kFfn, kChannels);
}

class FeedForwardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend = cpu_backend();
    ModelDims dims;
    dims.hidden_dim = kChannels;
    ffn = create<FeedForward>("ffn", "swiglu", {{"ffn_dim", std::to_string(kFfn)}}, dims,
                              backend.get());
    params = init_parameters(*backend, *ffn, 91, 0.4f);
    x_host = random_values(kRows * kChannels, 92);
    r_host = random_values(kRows * kChannels, 93);
  }

  std::shared_ptr<Backend> backend;
  std::shared_ptr<FeedForward> ffn;
  std::map<std::string, HostMatrix> params;
  std::vector<float> x_host;
  std::vector<float> r_host;
};

TEST_F(FeedForwardTest, ParametersUseLlamaNames) {
  std::map<std::string, Shape> shapes;
  for (const Parameter& p : ffn->parameters()) shapes[p.name] = p.shape;
  EXPECT_EQ(shapes["gate_proj.weight"], Shape({kFfn, kChannels}));
  EXPECT_EQ(shapes["up_proj.weight"], Shape({kFfn, kChannels}));
  EXPECT_EQ(shapes["down_proj.weight"], Shape({kChannels, kFfn}));
  EXPECT_FALSE(ffn->has_aux_stats());
}

TEST_F(FeedForwardTest, ForwardAndBackwardMatchReference) {
  ForwardContext ctx = make_context(*backend, 1, kRows, true);
  Tensor y = ffn->forward(ctx, tensor_from(*backend, x_host, {kRows, kChannels}));
  HostMatrix x = to_double(x_host);
  expect_close(to_vector(*backend, y), ffn_reference(x, params), 1e-6, 1e-5, "y");

  // Objective sum(y * r); FD in double on the reference (eps 1e-5), analytic in fp32.
  // Tolerance: abs 1e-5 + rel 2e-3 of the largest expected gradient.
  Tensor dx = ffn->backward(ctx, tensor_from(*backend, r_host, {kRows, kChannels}));
  const HostMatrix r = to_double(r_host);
  auto objective = [&] { return dot(ffn_reference(x, params), r); };
  expect_close(to_vector(*backend, dx), numeric_gradient(x, objective), 1e-5, 2e-3, "dx");
  for (const char* name : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) {
    expect_close(grad_of(*backend, *ffn, name), numeric_gradient(params[name], objective), 1e-5,
                 2e-3, std::string("d") + name);
  }
}

TEST_F(FeedForwardTest, SecondBackwardAccumulatesGradients) {
  ForwardContext ctx = make_context(*backend, 1, kRows, true);
  ffn->forward(ctx, tensor_from(*backend, x_host, {kRows, kChannels}));
  const Tensor dy = tensor_from(*backend, r_host, {kRows, kChannels});
  ffn->backward(ctx, dy);
  std::map<std::string, HostMatrix> doubled;
  for (const Parameter& p : ffn->parameters()) {
    doubled[p.name] = to_double(to_vector(*backend, p.grad));
    for (double& v : doubled[p.name]) v *= 2.0;
  }
  ffn->backward(ctx, dy);
  for (const Parameter& p : ffn->parameters()) {
    expect_close(to_vector(*backend, p.grad), doubled[p.name], 1e-7, 1e-5, p.name + " twice");
  }
}

TEST(FeedForwardOptions, MissingFfnDimIsAConfigError) {
  auto backend = cpu_backend();
  ModelDims dims;
  dims.hidden_dim = 8;
  EXPECT_THROW(create<FeedForward>("ffn", "swiglu", {}, dims, backend.get()), ConfigError);
}

}  // namespace
}  // namespace nnkit::test
