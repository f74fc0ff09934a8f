// Purpose: tests of `moe/topk`: top-k selection and renormalisation on hand-made logits, capacity
// dropping on a hand-made case, and the full router gradient (through the kept gates with
// renormalisation on and off, the Switch aux loss, the z-loss, capacity dropping) against central
// differences of sum(gate * r) + aux_weight * L_aux + z_weight * L_z computed by a double
// reference; plus loss-scale handling, gradient accumulation and option validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <optional>
#include <ostream>
#include <string>

#include "layer_test_util.h"
#include "nnkit/error.h"
#include "support/test_support.h"

namespace nnkit::test {
namespace {

struct RouterCase {
  std::string name;
  int64_t tokens;
  int64_t channels;
  int64_t experts;
  int64_t top_k;
  bool renormalize;
  double aux_weight;
  double z_weight;
  std::optional<double> capacity_factor;
  float dgate_scale;  // 0: the objective holds only the auxiliary losses
};

// gtest prints a failing parameter by its name rather than its bytes.
void PrintTo(const RouterCase& c, std::ostream* os) {
  *os << c.name;
}

std::map<std::string, std::string> options_of(const RouterCase& c) {
  return {{"top_k", std::to_string(c.top_k)},
          {"renormalize", c.renormalize ? "true" : "false"},
          {"aux_loss_weight", std::to_string(c.aux_weight)},
          {"z_loss_weight", std::to_string(c.z_weight)},
          {"capacity_factor", c.capacity_factor ? std::to_string(*c.capacity_factor) : "null"}};
}

std::shared_ptr<Router> make_router(Backend* backend, const RouterCase& c) {
  ModelDims dims;
  dims.hidden_dim = c.channels;
  dims.n_experts = c.experts;
  return create<Router>("moe", "topk", options_of(c), dims, backend);
}

struct ReferenceRouting {
  std::vector<int32_t> index;  // (N*k), -1 dropped
  HostMatrix gate;             // (N*k)
  std::vector<double> fraction;
  double aux_loss = 0.0;
  double z_loss = 0.0;
  double dropped_fraction = 0.0;
};

ReferenceRouting router_reference(const RouterCase& c, const HostMatrix& x, const HostMatrix& w) {
  const int64_t n_tokens = c.tokens;
  const int64_t experts = c.experts;
  const HostMatrix logits = matmul_transposed(x, w, n_tokens, c.channels, experts);
  ReferenceRouting out;
  out.fraction.assign(experts, 0.0);
  std::vector<double> mean_prob(experts, 0.0);
  for (int64_t n = 0; n < n_tokens; ++n) {
    const double* row = logits.data() + n * experts;
    const double top = *std::max_element(row, row + experts);
    double total = 0.0;
    for (int64_t e = 0; e < experts; ++e) total += std::exp(row[e] - top);
    const double lse = top + std::log(total);
    out.z_loss += lse * lse / double(n_tokens);
    std::vector<double> prob(experts);
    for (int64_t e = 0; e < experts; ++e) {
      prob[e] = std::exp(row[e] - lse);
      mean_prob[e] += prob[e] / double(n_tokens);
    }
    std::vector<int32_t> order(experts);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return prob[a] > prob[b]; });
    double kept = 0.0;
    for (int64_t r = 0; r < c.top_k; ++r) kept += prob[order[r]];
    for (int64_t r = 0; r < c.top_k; ++r) {
      out.index.push_back(order[r]);
      out.gate.push_back(c.renormalize ? prob[order[r]] / kept : prob[order[r]]);
      out.fraction[order[r]] += 1.0 / double(n_tokens * c.top_k);
    }
  }
  for (int64_t e = 0; e < experts; ++e) out.aux_loss += experts * out.fraction[e] * mean_prob[e];
  if (c.capacity_factor) {
    const auto capacity =
        static_cast<int64_t>(std::ceil(*c.capacity_factor * n_tokens * c.top_k / double(experts)));
    std::vector<int64_t> taken(experts, 0);
    for (size_t slot = 0; slot < out.index.size(); ++slot) {
      if (taken[out.index[slot]]++ < capacity) continue;
      out.index[slot] = -1;
      out.gate[slot] = 0.0;
      out.dropped_fraction += 1.0 / double(out.index.size());
    }
  }
  return out;
}

class RouterGradientTest : public ::testing::TestWithParam<RouterCase> {};

TEST_P(RouterGradientTest, MatchesReferenceAndFiniteDifferences) {
  const RouterCase& c = GetParam();
  auto backend = cpu_backend();
  auto router = make_router(backend.get(), c);
  auto params = init_parameters(*backend, *router, 51, 0.5f);
  const std::vector<float> x_host = random_values(c.tokens * c.channels, 52);
  const std::vector<float> r_host = random_values(c.tokens * c.top_k, 53, c.dgate_scale);

  ForwardContext ctx = make_context(*backend, 1, c.tokens, true);
  const Routing routing = router->route(ctx, tensor_from(*backend, x_host, {c.tokens, c.channels}));
  HostMatrix x = to_double(x_host);
  HostMatrix& w = params["gate.weight"];
  const ReferenceRouting want = router_reference(c, x, w);

  ASSERT_EQ(static_cast<int64_t>(routing.offsets.size()), c.experts + 1);
  EXPECT_EQ(to_vector_i32(*backend, routing.expert_index), want.index);
  expect_close(to_vector(*backend, routing.gate), want.gate, 1e-6, 1e-5, "gate");
  const AuxStats stats = router->aux_stats();
  EXPECT_NEAR(stats.aux_loss, want.aux_loss, 1e-5 * want.aux_loss);
  EXPECT_DOUBLE_EQ(stats.aux_weight, c.aux_weight);
  if (c.z_weight > 0.0) {
    EXPECT_NEAR(stats.z_loss, want.z_loss, 1e-5 * want.z_loss);
  }
  EXPECT_NEAR(stats.dropped_fraction, want.dropped_fraction, 1e-12);
  ASSERT_EQ(stats.expert_fraction.size(), want.fraction.size());
  for (size_t e = 0; e < want.fraction.size(); ++e) {
    // f_i is a count over N*k stored in f32 on the device: one rounding, 2^-24 relative.
    EXPECT_NEAR(stats.expert_fraction[e], want.fraction[e], 6e-8 * want.fraction[e]);
  }
  if (c.capacity_factor) {
    // Coverage: some token must keep one slot and lose another, so that the dropped expert's
    // logit still shapes the kept gate through the renormalisation.
    bool mixed = false;
    for (int64_t n = 0; n < c.tokens; ++n) {
      int64_t dropped = 0;
      for (int64_t r = 0; r < c.top_k; ++r) dropped += want.index[n * c.top_k + r] < 0 ? 1 : 0;
      mixed = mixed || (dropped > 0 && dropped < c.top_k);
    }
    EXPECT_TRUE(mixed) << "the case should drop some but not all slots of a token";
  }

  // Objective sum(gate * r) + aux_weight * L_aux + z_weight * L_z (f_i constant: it is piecewise
  // constant, so FD sees it that way too). FD in double (eps 1e-5), analytic in fp32.
  // Tolerance: abs 1e-5 + rel 2e-3 of the largest expected gradient.
  Tensor dx = router->backward_routing(ctx, tensor_from(*backend, r_host, {c.tokens, c.top_k}));
  const HostMatrix r = to_double(r_host);
  auto objective = [&] {
    const ReferenceRouting got = router_reference(c, x, w);
    return dot(got.gate, r) + c.aux_weight * got.aux_loss + c.z_weight * got.z_loss;
  };
  expect_close(to_vector(*backend, dx), numeric_gradient(x, objective), 1e-5, 2e-3, "dx");
  expect_close(grad_of(*backend, *router, "gate.weight"), numeric_gradient(w, objective), 1e-5,
               2e-3, "dgate.weight");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, RouterGradientTest,
    ::testing::Values(
        RouterCase{"renormalized_aux", 12, 8, 6, 2, true, 0.1, 0.0, std::nullopt, 1.0f},
        RouterCase{"raw_gates_aux", 12, 8, 6, 2, false, 0.1, 0.0, std::nullopt, 1.0f},
        RouterCase{"renormalized_no_aux", 12, 8, 6, 3, true, 0.0, 0.0, std::nullopt, 1.0f},
        RouterCase{"aux_loss_only", 12, 8, 6, 2, true, 0.5, 0.0, std::nullopt, 0.0f},
        RouterCase{"z_loss", 12, 8, 6, 2, true, 0.0, 0.05, std::nullopt, 1.0f},
        RouterCase{"z_loss_only", 12, 8, 6, 2, false, 0.0, 0.2, std::nullopt, 0.0f},
        RouterCase{"capacity_renormalized", 12, 8, 4, 2, true, 0.1, 0.05, 0.5, 1.0f},
        RouterCase{"capacity_raw_gates", 12, 8, 4, 2, false, 0.1, 0.0, 0.5, 1.0f},
        RouterCase{"top1", 10, 8, 4, 1, true, 0.1, 0.0, std::nullopt, 1.0f}),
    [](const auto& info) { return info.param.name; });

// Identity gate weights make x the logits.
std::shared_ptr<Router> identity_router(Backend& backend, const RouterCase& c) {
  auto router = make_router(&backend, c);
  init_parameters(backend, *router, 1, 0.0f);
  std::vector<float> identity(c.experts * c.channels, 0.0f);
  for (int64_t e = 0; e < c.experts; ++e) identity[e * c.channels + e] = 1.0f;
  set_parameter(backend, *router, "gate.weight", identity);
  return router;
}

TEST(Router, TopKSelectionAndRenormalisationOnHandMadeLogits) {
  auto backend = cpu_backend();
  // Row 0: experts 1 (logit 3) then 2 (logit 2). Row 1: a three-way tie; lower index wins.
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 0.0f, 0.5f, 0.5f, 0.5f, -1.0f};
  for (bool renormalize : {true, false}) {
    const RouterCase c{"hand", 2, 4, 4, 2, renormalize, 0.0, 0.0, std::nullopt, 1.0f};
    auto router = identity_router(*backend, c);
    ForwardContext ctx = make_context(*backend, 1, 2, false);
    const Routing routing = router->route(ctx, tensor_from(*backend, logits, {2, 4}));
    EXPECT_EQ(to_vector_i32(*backend, routing.expert_index), (std::vector<int32_t>{1, 2, 0, 1}));
    // Sorted by expert: expert 0 has slot 2, expert 1 slots 0 and 3, expert 2 slot 1.
    EXPECT_EQ(routing.offsets, (std::vector<int64_t>{0, 1, 3, 4, 4}));
    EXPECT_EQ(to_vector_i32(*backend, routing.slot), (std::vector<int32_t>{2, 0, 3, 1}));
    EXPECT_EQ(to_vector_i32(*backend, routing.token), (std::vector<int32_t>{1, 0, 1, 0}));
    const double z0 = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + 1.0;
    const double z1 = 3.0 * std::exp(0.5) + std::exp(-1.0);
    const std::vector<double> want =
        renormalize ? std::vector<double>{std::exp(3.0) / (std::exp(3.0) + std::exp(2.0)),
                                          std::exp(2.0) / (std::exp(3.0) + std::exp(2.0)), 0.5, 0.5}
                    : std::vector<double>{std::exp(3.0) / z0, std::exp(2.0) / z0,
                                          std::exp(0.5) / z1, std::exp(0.5) / z1};
    expect_close(to_vector(*backend, routing.gate), want, 1e-6, 0.0,
                 renormalize ? "renormalized gates" : "raw gates");
  }
}

TEST(Router, CapacityDropsOverflowSlotsInTokenOrder) {
  auto backend = cpu_backend();
  // 4 tokens, top-1 of 2 experts, capacity ceil(1.0 * 4 * 1 / 2) = 2; all tokens prefer expert 0,
  // so tokens 2 and 3 are dropped.
  const RouterCase c{"capacity", 4, 2, 2, 1, true, 0.01, 0.0, 1.0, 1.0f};
  auto router = identity_router(*backend, c);
  ForwardContext ctx = make_context(*backend, 1, 4, true);
  const std::vector<float> logits = {2.0f, 0.0f, 1.0f, 0.5f, 3.0f, -1.0f, 0.2f, 0.1f};
  const Routing routing = router->route(ctx, tensor_from(*backend, logits, {4, 2}));
  EXPECT_EQ(routing.n_routed, 2);
  EXPECT_EQ(routing.offsets, (std::vector<int64_t>{0, 2, 2}));
  EXPECT_EQ(to_vector_i32(*backend, routing.expert_index), (std::vector<int32_t>{0, 0, -1, -1}));
  expect_close(to_vector(*backend, routing.gate), {1.0, 1.0, 0.0, 0.0}, 1e-6, 0.0, "gates");
  const AuxStats stats = router->aux_stats();
  EXPECT_DOUBLE_EQ(stats.dropped_fraction, 0.5);
  // The aux loss sees the routing before dropping: f = (1, 0).
  EXPECT_DOUBLE_EQ(stats.expert_fraction[0], 1.0);
  EXPECT_DOUBLE_EQ(stats.expert_fraction[1], 0.0);
  // Gradient on dropped slots is ignored: dgate = 1 there changes nothing.
  router->backward_routing(ctx, tensor_from(*backend, {0.0f, 0.0f, 0.0f, 0.0f}, {4, 1}));
  const std::vector<float> base = grad_of(*backend, *router, "gate.weight");
  zero_grads(*backend, *router);
  router->backward_routing(ctx, tensor_from(*backend, {0.0f, 0.0f, 1.0f, 1.0f}, {4, 1}));
  expect_close(grad_of(*backend, *router, "gate.weight"), to_double(base), 0.0, 0.0,
               "dW with gradient on dropped slots");
}

TEST(Router, StaticShapesGiveThePaddedLayoutWithTheSameRoutingAndGradients) {
  // Under ctx.static_shapes a capacity-limited router returns fixed per-expert blocks (what a
  // CUDA Graph step needs) and reads nothing on the host; everything else is unchanged.
  auto backend = cpu_backend();
  const RouterCase c{"padded", 12, 8, 4, 2, true, 0.1, 0.05, 1.0, 1.0f};
  const std::vector<float> x = random_values(c.tokens * c.channels, 81);
  const Tensor dgate = tensor_from(*backend, random_values(c.tokens * c.top_k, 82), {12, 2});
  struct Run {
    Routing routing;
    AuxStats stats;
    std::vector<float> dx, dw;
  };
  auto run = [&](bool static_shapes) {
    auto router = make_router(backend.get(), c);
    init_parameters(*backend, *router, 83, 0.5f);
    EXPECT_TRUE(router->has_static_shapes());
    ForwardContext ctx = make_context(*backend, 1, c.tokens, true);
    ctx.static_shapes = static_shapes;
    Run r;
    r.routing = router->route(ctx, tensor_from(*backend, x, {c.tokens, c.channels}));
    r.stats = router->aux_stats();
    r.dx = to_vector(*backend, router->backward_routing(ctx, dgate));
    r.dw = grad_of(*backend, *router, "gate.weight");
    return r;
  };
  const Run compact = run(false), padded = run(true);
  const int64_t capacity = 6;  // ceil(1.0 * 12 * 2 / 4)
  EXPECT_EQ(compact.routing.padded_capacity, 0);
  ASSERT_EQ(padded.routing.padded_capacity, capacity);
  EXPECT_EQ(padded.routing.offsets, (std::vector<int64_t>{0, 6, 12, 18, 24}));
  EXPECT_EQ(padded.routing.n_routed, 4 * capacity);
  EXPECT_EQ(to_vector_i32(*backend, padded.routing.expert_index),
            to_vector_i32(*backend, compact.routing.expert_index));
  EXPECT_EQ(to_vector(*backend, padded.routing.gate), to_vector(*backend, compact.routing.gate));
  // Each expert's block holds its compact rows, then padding (-1).
  const std::vector<int32_t> ct = to_vector_i32(*backend, compact.routing.token);
  const std::vector<int32_t> cs = to_vector_i32(*backend, compact.routing.slot);
  const std::vector<int32_t> pt = to_vector_i32(*backend, padded.routing.token);
  const std::vector<int32_t> ps = to_vector_i32(*backend, padded.routing.slot);
  int64_t padding = 0;
  for (int64_t e = 0; e < c.experts; ++e) {
    const int64_t begin = compact.routing.offsets[e], kept = compact.routing.offsets[e + 1] - begin;
    ASSERT_LE(kept, capacity);
    for (int64_t r = 0; r < capacity; ++r) {
      const size_t at = size_t(e * capacity + r);
      EXPECT_EQ(pt[at], r < kept ? ct[size_t(begin + r)] : -1) << "expert " << e << " row " << r;
      EXPECT_EQ(ps[at], r < kept ? cs[size_t(begin + r)] : -1) << "expert " << e << " row " << r;
      padding += r < kept ? 0 : 1;
    }
  }
  EXPECT_GT(padding, 0) << "the case should leave some block rows empty";
  EXPECT_GT(compact.stats.dropped_fraction, 0.0) << "the case should drop slots";
  EXPECT_EQ(padded.stats.dropped_fraction, compact.stats.dropped_fraction);
  EXPECT_EQ(padded.stats.aux_loss, compact.stats.aux_loss);
  EXPECT_EQ(padded.stats.z_loss, compact.stats.z_loss);
  EXPECT_EQ(padded.stats.expert_fraction, compact.stats.expert_fraction);
  EXPECT_EQ(padded.dx, compact.dx);
  EXPECT_EQ(padded.dw, compact.dw);
  // Dropless routers have no static layout.
  const RouterCase dropless{"dropless", 12, 8, 4, 2, true, 0.1, 0.0, std::nullopt, 1.0f};
  EXPECT_FALSE(make_router(backend.get(), dropless)->has_static_shapes());
}

TEST(Router, RecordedDecodeStepsRouteInOneOpLikeThePlainDecode) {
  // A KV-cache step outside training under static shapes (a recorded decode step) routes
  // through Backend::moe_route_padded: the same choices and gates as the plain (compact) decode
  // step, each expert's kept rows first in its block of N rows (or of the capacity), then
  // padding. Dropless with renormalised gates, probability gates, and a capacity that drops.
  auto backend = cpu_backend();
  const RouterCase cases[] = {{"dropless", 5, 8, 4, 2, true, 0.1, 0.0, std::nullopt, 1.0f},
                              {"probabilities", 5, 8, 6, 3, false, 0.0, 0.0, std::nullopt, 1.0f},
                              {"capacity", 6, 8, 4, 2, true, 0.0, 0.0, 0.5, 1.0f}};
  for (const RouterCase& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<float> x = random_values(size_t(c.tokens * c.channels), 97, 1.0f);
    auto route = [&](bool static_shapes) {
      auto router = make_router(backend.get(), c);
      init_parameters(*backend, *router, 91, 0.5f);
      ForwardContext ctx = make_context(*backend, c.tokens, 1, false);
      ctx.use_kv_cache = true;
      ctx.static_shapes = static_shapes;
      return router->route(ctx, tensor_from(*backend, x, {c.tokens, c.channels}));
    };
    const Routing compact = route(false), padded = route(true);
    const int64_t block = c.capacity_factor ? 2 : c.tokens;  // ceil(0.5 * 12 / 4) = 2
    ASSERT_EQ(padded.padded_capacity, block);
    EXPECT_EQ(padded.n_routed, c.experts * block);
    EXPECT_EQ(to_vector_i32(*backend, padded.expert_index),
              to_vector_i32(*backend, compact.expert_index));
    EXPECT_EQ(to_vector(*backend, padded.gate), to_vector(*backend, compact.gate));
    const std::vector<int32_t> kept = to_vector_i32(*backend, padded.kept_offsets);
    std::vector<int32_t> compact_offsets(compact.offsets.begin(), compact.offsets.end());
    EXPECT_EQ(kept, compact_offsets);
    const std::vector<int32_t> ct = to_vector_i32(*backend, compact.token);
    const std::vector<int32_t> pt = to_vector_i32(*backend, padded.token);
    const std::vector<int32_t> ps = to_vector_i32(*backend, padded.slot);
    const std::vector<int32_t> cs = to_vector_i32(*backend, compact.slot);
    for (int64_t e = 0; e < c.experts; ++e) {
      const int64_t begin = compact.offsets[e], count = compact.offsets[e + 1] - begin;
      for (int64_t r = 0; r < block; ++r) {
        const size_t at = size_t(e * block + r);
        EXPECT_EQ(pt[at], r < count ? ct[size_t(begin + r)] : -1) << "expert " << e;
        EXPECT_EQ(ps[at], r < count ? cs[size_t(begin + r)] : -1) << "expert " << e;
      }
    }
    if (c.capacity_factor) EXPECT_LT(compact.n_routed, c.tokens * c.top_k) << "should drop";
  }
}

TEST(Router, RouteWithInputNormEqualsTheNormThenRoute) {
  // A recorded decode step with an RMSNorm in front computes the norm inside the router's op
  // (Backend::add_rmsnorm_moe_route_padded): the same residual stream, normed input, choices,
  // gates and layout as the norm's forward_with_residual followed by route(). Outside a decode
  // step (training) the default path gives the same. A residual of another shape is refused
  // with both shapes.
  auto backend = cpu_backend();
  const RouterCase c{"dropless", 5, 8, 4, 2, true, 0.1, 0.0, std::nullopt, 1.0f};
  ModelDims dims;
  dims.hidden_dim = c.channels;
  auto norm = create<Norm>("norm", "rmsnorm", {{"eps", "1e-5"}}, dims, backend.get());
  init_parameters(*backend, *norm, 93, 0.5f);
  const Tensor x = tensor_from(*backend, random_values(size_t(c.tokens * c.channels), 94, 1.0f),
                               {c.tokens, c.channels});
  const Tensor residual = tensor_from(
      *backend, random_values(size_t(c.tokens * c.channels), 95, 1.0f), {c.tokens, c.channels});
  for (bool decode_step : {true, false}) {
    SCOPED_TRACE(decode_step ? "decode step" : "training");
    auto router = make_router(backend.get(), c);
    init_parameters(*backend, *router, 91, 0.5f);
    ForwardContext ctx = make_context(*backend, c.tokens, 1, !decode_step);
    ctx.use_kv_cache = decode_step;
    ctx.static_shapes = decode_step;
    Tensor sum_ref;
    const Tensor normed_ref = norm->forward_with_residual(ctx, x, residual, sum_ref);
    const Routing want = router->route(ctx, normed_ref);
    const std::vector<int32_t> want_index = to_vector_i32(*backend, want.expert_index);
    const std::vector<float> want_gate = to_vector(*backend, want.gate);
    const std::vector<int32_t> want_token = to_vector_i32(*backend, want.token);
    Tensor sum, normed;
    const Routing got = router->route_with_input_norm(ctx, x, residual, *norm, sum, normed);
    EXPECT_EQ(to_vector(*backend, sum), to_vector(*backend, sum_ref));
    EXPECT_EQ(to_vector(*backend, normed), to_vector(*backend, normed_ref));
    EXPECT_EQ(to_vector_i32(*backend, got.expert_index), want_index);
    EXPECT_EQ(to_vector(*backend, got.gate), want_gate);
    EXPECT_EQ(to_vector_i32(*backend, got.token), want_token);
    EXPECT_EQ(got.padded_capacity, want.padded_capacity);
    if (decode_step) {
      EXPECT_EQ(to_vector_i32(*backend, got.kept_offsets),
                to_vector_i32(*backend, want.kept_offsets));
      const Tensor narrow =
          tensor_from(*backend, random_values(size_t(c.tokens * 4), 96, 1.0f), {c.tokens, 4});
      try {
        router->route_with_input_norm(ctx, x, narrow, *norm, sum, normed);
        ADD_FAILURE() << "accepted a residual of another shape";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("expects the residual shaped like x"),
                  std::string::npos)
            << e.what();
      }
    }
  }
}

TEST(Router, AuxiliaryGradientScalesWithLossScale) {
  auto backend = cpu_backend();
  const RouterCase c{"scale", 8, 8, 4, 2, true, 0.1, 0.05, std::nullopt, 1.0f};
  auto router = make_router(backend.get(), c);
  init_parameters(*backend, *router, 61, 0.5f);
  ForwardContext ctx = make_context(*backend, 1, c.tokens, true);
  router->route(ctx, tensor_from(*backend, random_values(8 * 8, 62), {8, 8}));
  const Tensor no_gate_gradient = backend->zeros({8, 2});
  router->backward_routing(ctx, no_gate_gradient);
  const std::vector<float> at_one = grad_of(*backend, *router, "gate.weight");
  zero_grads(*backend, *router);
  ctx.loss_scale = 2.0f;
  router->backward_routing(ctx, no_gate_gradient);
  HostMatrix doubled = to_double(at_one);
  for (double& v : doubled) v *= 2.0;
  expect_close(grad_of(*backend, *router, "gate.weight"), doubled, 1e-7, 1e-5, "dW at scale 2");
}

TEST(Router, SecondBackwardAccumulatesGradient) {
  auto backend = cpu_backend();
  const RouterCase c{"accumulate", 8, 8, 4, 2, true, 0.1, 0.0, std::nullopt, 1.0f};
  auto router = make_router(backend.get(), c);
  init_parameters(*backend, *router, 71, 0.5f);
  ForwardContext ctx = make_context(*backend, 1, c.tokens, true);
  router->route(ctx, tensor_from(*backend, random_values(8 * 8, 72), {8, 8}));
  const Tensor dgate = tensor_from(*backend, random_values(16, 73), {8, 2});
  router->backward_routing(ctx, dgate);
  HostMatrix doubled = to_double(grad_of(*backend, *router, "gate.weight"));
  for (double& v : doubled) v *= 2.0;
  router->backward_routing(ctx, dgate);
  expect_close(grad_of(*backend, *router, "gate.weight"), doubled, 1e-7, 1e-5, "dW twice");
}

TEST(RouterOptions, TopKAboveExpertCountIsAConfigError) {
  auto backend = cpu_backend();
  ModelDims dims;
  dims.hidden_dim = 8;
  dims.n_experts = 16;
  try {
    create<Router>("moe", "topk", {{"top_k", "20"}}, dims, backend.get());
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("moe/topk"), std::string::npos) << message;
    EXPECT_NE(message.find("(20) must not exceed n_experts (16)"), std::string::npos) << message;
  }
}

TEST(RouterOptions, ParameterIsTheMixtralGate) {
  auto backend = cpu_backend();
  const RouterCase c{"names", 1, 8, 4, 2, true, 0.01, 0.0, std::nullopt, 1.0f};
  auto router = make_router(backend.get(), c);
  ASSERT_EQ(router->parameters().size(), 1u);
  EXPECT_EQ(router->parameters()[0].name, "gate.weight");
  EXPECT_EQ(router->parameters()[0].shape, Shape({4, 8}));
  EXPECT_EQ(router->top_k(), 2);
  EXPECT_EQ(router->n_experts(), 4);
}

}  // namespace
}  // namespace nnkit::test
