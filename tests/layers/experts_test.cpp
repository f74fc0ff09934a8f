// Purpose: tests of `moe/swiglu`: routed forward against a double reference (including a dropped
// slot and an expert no token chose), backward (dx, dgate and all three weights of every expert)
// against central differences of sum(y * r), gradient accumulation, parameter naming, and a
// shard of the experts (expert parallelism) against the whole layer.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "layer_test_util.h"
#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

constexpr int64_t kTokens = 7;
constexpr int64_t kChannels = 8;
constexpr int64_t kFfn = 12;
constexpr int64_t kExperts = 4;
constexpr int64_t kTopK = 2;

// Expert 3 is never chosen; slot (5, 1) is dropped (index -1, gate 0).
const std::vector<int32_t> kExpertIndex = {0, 1, 2, 0, 1, 2, 0, 2, 1, 0, 2, -1, 1, 0};

std::string weight_name(int64_t expert, const char* which) {
  return "experts." + std::to_string(expert) + "." + which + ".weight";
}

HostMatrix experts_reference(const HostMatrix& x, const HostMatrix& gate,
                             std::map<std::string, HostMatrix>& p) {
  HostMatrix y(kTokens * kChannels, 0.0);
  for (int64_t n = 0; n < kTokens; ++n) {
    const HostMatrix row(x.begin() + n * kChannels, x.begin() + (n + 1) * kChannels);
    for (int64_t r = 0; r < kTopK; ++r) {
      const int32_t e = kExpertIndex[n * kTopK + r];
      if (e < 0) continue;
      const HostMatrix h_gate = matmul_transposed(row, p[weight_name(e, "w1")], 1, kChannels, kFfn);
      const HostMatrix h_up = matmul_transposed(row, p[weight_name(e, "w3")], 1, kChannels, kFfn);
      HostMatrix activated(kFfn);
      for (int64_t f = 0; f < kFfn; ++f) activated[f] = silu(h_gate[f]) * h_up[f];
      const HostMatrix out =
          matmul_transposed(activated, p[weight_name(e, "w2")], 1, kFfn, kChannels);
      for (int64_t c = 0; c < kChannels; ++c) y[n * kChannels + c] += gate[n * kTopK + r] * out[c];
    }
  }
  return y;
}

// A Routing over `n_experts` experts from (kTokens, kTopK) choices, sorted by the backend.
Routing routing_over(Backend& backend, const std::vector<int32_t>& index, const Tensor& gate,
                     int64_t n_experts) {
  Routing r;
  r.n_tokens = kTokens;
  r.top_k = kTopK;
  r.n_experts = n_experts;
  r.expert_index = tensor_from_i32(backend, index, {kTokens, kTopK});
  r.gate = gate;
  const int64_t slots = kTokens * kTopK;
  r.token = backend.empty({slots}, DType::kI32);
  r.slot = backend.empty({slots}, DType::kI32);
  Tensor offsets = backend.empty({n_experts + 1}, DType::kI32);
  Tensor load = backend.empty({n_experts});
  backend.moe_sort_by_expert(r.expert_index.view({slots}), n_experts, kTopK, -1, Tensor(), r.token,
                             r.slot, offsets, load);
  std::vector<int32_t> host(static_cast<size_t>(n_experts) + 1);
  backend.copy_to_host(host.data(), offsets);
  r.offsets.assign(host.begin(), host.end());
  r.n_routed = r.offsets.back();
  return r;
}

class ExpertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    backend = cpu_backend();
    ModelDims dims;
    dims.hidden_dim = kChannels;
    experts = create<Experts>(
        "moe", "swiglu",
        {{"n_experts", std::to_string(kExperts)}, {"ffn_dim", std::to_string(kFfn)}}, dims,
        backend.get());
    params = init_parameters(*backend, *experts, 81, 0.4f);
    x_host = random_values(kTokens * kChannels, 82);
    gate_host = random_values(kTokens * kTopK, 83);
    for (size_t s = 0; s < gate_host.size(); ++s) {
      if (kExpertIndex[s] < 0) gate_host[s] = 0.0f;
    }
    r_host = random_values(kTokens * kChannels, 84);
    routing = make_routing(kExpertIndex, tensor_from(*backend, gate_host, {kTokens, kTopK}));
  }

  // A Routing as a router builds it: the chosen experts sorted by the backend's dispatch op.
  Routing make_routing(const std::vector<int32_t>& index, const Tensor& gate) const {
    return routing_over(*backend, index, gate, kExperts);
  }

  // The static layout (ctx.static_shapes): every expert a block of `capacity` rows, padded.
  Routing make_padded_routing(const std::vector<int32_t>& index, const Tensor& gate,
                              int64_t capacity) const {
    Routing r;
    r.n_tokens = kTokens;
    r.top_k = kTopK;
    r.n_experts = kExperts;
    r.expert_index = tensor_from_i32(*backend, index, {kTokens, kTopK});
    r.gate = backend->empty({kTokens, kTopK});
    backend->copy(r.gate, gate);
    r.token = backend->empty({kExperts * capacity}, DType::kI32);
    r.slot = backend->empty({kExperts * capacity}, DType::kI32);
    Tensor offsets = backend->empty({kExperts + 1}, DType::kI32);
    Tensor load = backend->empty({kExperts});
    backend->moe_sort_by_expert_padded(r.expert_index.view({kTokens * kTopK}), kExperts, kTopK,
                                       capacity, r.gate.view({kTokens * kTopK}), r.token, r.slot,
                                       offsets, load);
    for (int64_t e = 0; e <= kExperts; ++e) r.offsets.push_back(e * capacity);
    r.n_routed = kExperts * capacity;
    r.padded_capacity = capacity;
    return r;
  }

  std::shared_ptr<Backend> backend;
  std::shared_ptr<Experts> experts;
  std::map<std::string, HostMatrix> params;
  std::vector<float> x_host;
  std::vector<float> gate_host;
  std::vector<float> r_host;
  Routing routing;
};

TEST_F(ExpertsTest, ParametersUseMixtralNames) {
  EXPECT_EQ(experts->n_experts(), kExperts);
  EXPECT_EQ(experts->parameters_per_expert(), 3 * kChannels * kFfn);
  EXPECT_EQ(experts->parameter_count(), kExperts * 3 * kChannels * kFfn);
  std::map<std::string, Shape> shapes;
  for (const Parameter& p : experts->parameters()) shapes[p.name] = p.shape;
  EXPECT_EQ(shapes[weight_name(3, "w1")], Shape({kFfn, kChannels}));
  EXPECT_EQ(shapes[weight_name(3, "w3")], Shape({kFfn, kChannels}));
  EXPECT_EQ(shapes[weight_name(3, "w2")], Shape({kChannels, kFfn}));
}

TEST_F(ExpertsTest, ForwardAndBackwardMatchReference) {
  ForwardContext ctx = make_context(*backend, 1, kTokens, true);
  Tensor y =
      experts->forward_routed(ctx, tensor_from(*backend, x_host, {kTokens, kChannels}), routing);
  HostMatrix x = to_double(x_host);
  HostMatrix gate = to_double(gate_host);
  expect_close(to_vector(*backend, y), experts_reference(x, gate, params), 1e-6, 1e-5, "y");

  // Objective sum(y * r); FD in double on the reference (eps 1e-5), analytic in fp32.
  // Tolerance: abs 1e-5 + rel 2e-3 of the largest expected gradient.
  Tensor dgate;
  Tensor dx =
      experts->backward_routed(ctx, tensor_from(*backend, r_host, {kTokens, kChannels}), dgate);
  const HostMatrix r = to_double(r_host);
  auto objective = [&] { return dot(experts_reference(x, gate, params), r); };
  expect_close(to_vector(*backend, dx), numeric_gradient(x, objective), 1e-5, 2e-3, "dx");
  ASSERT_EQ(dgate.shape(), Shape({kTokens, kTopK}));
  // The reference ignores a dropped slot's gate, so its FD derivative is 0 as required.
  expect_close(to_vector(*backend, dgate), numeric_gradient(gate, objective), 1e-5, 2e-3, "dgate");
  for (int64_t e = 0; e < kExperts; ++e) {
    for (const char* which : {"w1", "w2", "w3"}) {
      const std::string name = weight_name(e, which);
      expect_close(grad_of(*backend, *experts, name), numeric_gradient(params[name], objective),
                   1e-5, 2e-3, "d" + name);
    }
  }
}

TEST_F(ExpertsTest, SecondBackwardAccumulatesGradients) {
  ForwardContext ctx = make_context(*backend, 1, kTokens, true);
  experts->forward_routed(ctx, tensor_from(*backend, x_host, {kTokens, kChannels}), routing);
  const Tensor dy = tensor_from(*backend, r_host, {kTokens, kChannels});
  Tensor dgate;
  experts->backward_routed(ctx, dy, dgate);
  std::map<std::string, HostMatrix> doubled;
  for (const Parameter& p : experts->parameters()) {
    doubled[p.name] = to_double(to_vector(*backend, p.grad));
    for (double& v : doubled[p.name]) v *= 2.0;
  }
  experts->backward_routed(ctx, dy, dgate);
  for (const Parameter& p : experts->parameters()) {
    expect_close(to_vector(*backend, p.grad), doubled[p.name], 1e-7, 1e-5, p.name + " twice");
  }
}

TEST_F(ExpertsTest, PaddedLayoutGivesTheSameOutputsAndGradients) {
  // Capacity 5 keeps every slot (expert 0 has the most, 5) and leaves padding rows in the other
  // blocks: they gather zero rows, and their outputs and gradients go nowhere.
  const Tensor gate = tensor_from(*backend, gate_host, {kTokens, kTopK});
  const Routing padded = make_padded_routing(kExpertIndex, gate, 5);
  const Tensor x = tensor_from(*backend, x_host, {kTokens, kChannels});
  const Tensor dy = tensor_from(*backend, r_host, {kTokens, kChannels});
  struct Run {
    std::vector<float> y, dx, dgate;
    std::map<std::string, std::vector<float>> grads;
  };
  auto run = [&](const Routing& r) {
    for (const Parameter& p : experts->parameters()) backend->fill(p.grad, 0.0f);
    ForwardContext ctx = make_context(*backend, 1, kTokens, true);
    Run out;
    out.y = to_vector(*backend, experts->forward_routed(ctx, x, r));
    Tensor dgate;
    out.dx = to_vector(*backend, experts->backward_routed(ctx, dy, dgate));
    out.dgate = to_vector(*backend, dgate);
    for (const Parameter& p : experts->parameters())
      out.grads[p.name] = to_vector(*backend, p.grad);
    return out;
  };
  const Run want = run(routing), got = run(padded);
  // The same rows through products of other heights: equal up to the products' summation order.
  expect_close(got.y, to_double(want.y), 1e-7, 1e-6, "y");
  expect_close(got.dx, to_double(want.dx), 1e-7, 1e-6, "dx");
  expect_close(got.dgate, to_double(want.dgate), 1e-7, 1e-6, "dgate");
  for (const auto& [name, g] : want.grads) {
    expect_close(got.grads.at(name), to_double(g), 1e-7, 1e-6, "d" + name);
  }
}

TEST_F(ExpertsTest, DecodingInThePaddedLayoutUsesTheGroupedProducts) {
  // Inference with the device offsets (the decode step of a recorded graph): one grouped
  // product per weight over all experts, the same outputs as the compact per-expert loop.
  const Tensor gate = tensor_from(*backend, gate_host, {kTokens, kTopK});
  Routing padded = make_padded_routing(kExpertIndex, gate, 5);
  padded.kept_offsets = backend->empty({kExperts + 1}, DType::kI32);
  {
    Tensor load = backend->empty({kExperts});
    Tensor token = backend->empty({kExperts * 5}, DType::kI32);
    Tensor slot = backend->empty({kExperts * 5}, DType::kI32);
    Tensor g = backend->empty({kTokens * kTopK});
    backend->copy(g, gate.view({kTokens * kTopK}));
    backend->moe_sort_by_expert_padded(tensor_from_i32(*backend, kExpertIndex, {kTokens * kTopK}),
                                       kExperts, kTopK, 5, g, token, slot, padded.kept_offsets,
                                       load);
  }
  const Tensor x = tensor_from(*backend, x_host, {kTokens, kChannels});
  ForwardContext ctx = make_context(*backend, 1, kTokens, false);
  const std::vector<float> want = to_vector(*backend, experts->forward_routed(ctx, x, routing));
  const std::vector<float> got = to_vector(*backend, experts->forward_routed(ctx, x, padded));
  expect_close(got, to_double(want), 1e-7, 1e-6, "y (grouped)");
}

TEST_F(ExpertsTest, AllSlotsDroppedGivesZeros) {
  const Routing empty =
      make_routing(std::vector<int32_t>(kTokens * kTopK, -1), backend->zeros({kTokens, kTopK}));
  ASSERT_EQ(empty.n_routed, 0);
  ForwardContext ctx = make_context(*backend, 1, kTokens, true);
  Tensor y =
      experts->forward_routed(ctx, tensor_from(*backend, x_host, {kTokens, kChannels}), empty);
  expect_close(to_vector(*backend, y), HostMatrix(kTokens * kChannels, 0.0), 0.0, 0.0, "y");
  Tensor dgate;
  Tensor dx =
      experts->backward_routed(ctx, tensor_from(*backend, r_host, {kTokens, kChannels}), dgate);
  expect_close(to_vector(*backend, dx), HostMatrix(kTokens * kChannels, 0.0), 0.0, 0.0, "dx");
  expect_close(to_vector(*backend, dgate), HostMatrix(kTokens * kTopK, 0.0), 0.0, 0.0, "dgate");
}

}  // namespace
}  // namespace nnkit::test

namespace nnkit::test {
namespace {

// Expert parallelism (ModelDims::expert_begin/end): an instance holding experts [2, 4) names
// them with their global index, counts all 4, and on a Routing over its block computes what the
// whole layer computes for tokens routed to those experts (outputs and weight gradients).
TEST_F(ExpertsTest, AShardHoldsItsBlockUnderGlobalNamesAndComputesLikeTheWholeLayer) {
  ModelDims dims;
  dims.hidden_dim = kChannels;
  dims.expert_begin = 2;
  dims.expert_end = 4;
  const std::map<std::string, std::string> options = {{"n_experts", std::to_string(kExperts)},
                                                      {"ffn_dim", std::to_string(kFfn)}};
  auto shard = create<Experts>("moe", "swiglu", options, dims, backend.get());
  EXPECT_EQ(shard->n_experts(), kExperts);
  EXPECT_EQ(shard->parameter_count(), 2 * shard->parameters_per_expert());
  std::vector<std::string> names;
  for (const Parameter& p : shard->parameters()) names.push_back(p.name);
  EXPECT_EQ(names, (std::vector<std::string>{weight_name(2, "w1"), weight_name(2, "w2"),
                                             weight_name(2, "w3"), weight_name(3, "w1"),
                                             weight_name(3, "w2"), weight_name(3, "w3")}));
  init_parameters(*backend, *shard, 85, 0.4f);  // allocates; the values are the whole layer's:
  for (const std::string& name : names)
    set_parameter(*backend, *shard, name, to_float(params[name]));

  // Every slot on experts 2 or 3: global indices for the whole layer, local ones for the shard.
  const std::vector<int32_t> global = {2, 3, 3, 2, 2, 3, 3, 2, 2, 3, 3, 2, 2, 3};
  std::vector<int32_t> local(global.size());
  for (size_t i = 0; i < global.size(); ++i) local[i] = global[i] - 2;
  const Tensor gate = tensor_from(*backend, gate_host, {kTokens, kTopK});
  const Tensor x = tensor_from(*backend, x_host, {kTokens, kChannels});
  const Tensor r = tensor_from(*backend, r_host, {kTokens, kChannels});
  ForwardContext ctx = make_context(*backend, 1, kTokens, true);
  const Tensor y_whole =
      experts->forward_routed(ctx, x, routing_over(*backend, global, gate, kExperts));
  Tensor dgate_whole, dgate_shard;
  const Tensor dx_whole = experts->backward_routed(ctx, r, dgate_whole);
  const Tensor y_shard = shard->forward_routed(ctx, x, routing_over(*backend, local, gate, 2));
  const Tensor dx_shard = shard->backward_routed(ctx, r, dgate_shard);
  expect_close(to_vector(*backend, y_shard), to_double(to_vector(*backend, y_whole)), 0.0, 0.0,
               "y");
  expect_close(to_vector(*backend, dx_shard), to_double(to_vector(*backend, dx_whole)), 0.0, 0.0,
               "dx");
  expect_close(to_vector(*backend, dgate_shard), to_double(to_vector(*backend, dgate_whole)), 0.0,
               0.0, "dgate");
  for (int64_t e = 2; e < 4; ++e) {
    for (const char* which : {"w1", "w2", "w3"}) {
      const std::string name = weight_name(e, which);
      expect_close(grad_of(*backend, *shard, name), to_double(grad_of(*backend, *experts, name)),
                   0.0, 0.0, "d" + name);
    }
  }
  // The whole layer's Routing is not the shard's.
  EXPECT_THROW(shard->forward_routed(ctx, x, routing_over(*backend, global, gate, kExperts)),
               ShapeError);

  ModelDims outside = dims;
  outside.expert_begin = 3;
  outside.expert_end = 5;
  try {
    create<Experts>("moe", "swiglu", options, outside, backend.get());
    FAIL() << "a block beyond the experts was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("expert shard [3, 5) is not a non-empty block of the 4 "
                                         "experts"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace nnkit::test
