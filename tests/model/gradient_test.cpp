// Purpose: whole-model gradients against central finite differences. The objective is what
// Transformer::backward() differentiates: mean cross-entropy (forward_loss) + the weighted
// auxiliary losses (aux_loss()). For ~3 entries of EVERY parameter tensor (embedding rows that
// the batch uses, every norm, q/k/v/o, router gate, each expert's w1/w2/w3 or the dense FFN,
// final norm, LM head) the fp32 gradient from backward(1.0f) is compared to the central
// difference of the same objective evaluated by the double-precision reference (reference_model.h)
// with eps 1e-4.
// Why the reference and not the fp32 model: fp32 differences need eps ~1e-2 and then carry
// O(eps^2) curvature and O(1e-7 / eps) rounding errors of the same size as small gradients; the
// double reference (checked against the model's forward to 1e-4 in forward_reference_test.cpp)
// gives the derivative to ~1e-9, so the tolerance below only has to absorb fp32 rounding in the
// backward pass: |g - fd| <= 2e-6 + 5e-4 * |fd| (the largest error seen here is ~0.02 of that).
// Routing is piecewise constant (top-k, capacity): every difference asserts that the perturbed
// evaluations route every slot exactly as the unperturbed one, so no difference straddles a jump.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "model/reference_model.h"

namespace nnkit::test {
namespace {

constexpr double kEps = 1e-4;
constexpr double kAbsTolerance = 2e-6;
constexpr double kRelTolerance = 5e-4;
constexpr int kEntriesPerTensor = 3;

struct GradientCase {
  std::string name;
  ModelSpec spec;
};

// gtest prints the case by name in failure messages.
void PrintTo(const GradientCase& c, std::ostream* os) {
  *os << c.name;
}

std::vector<GradientCase> gradient_cases() {
  ModelSpec base;
  base.hidden_dim = 16;
  base.n_heads = 2;
  base.head_dim = 8;
  base.ffn_dim = 12;
  base.aux_loss_weight = 0.3;  // large enough that a missing aux gradient shows at the router
  std::vector<GradientCase> cases;
  cases.push_back({"MoeAuxLoss", base});
  ModelSpec z_loss = base;
  z_loss.z_loss_weight = 0.05;
  cases.push_back({"MoeAuxAndZLoss", z_loss});
  ModelSpec capacity = base;
  capacity.capacity_factor = 0.75;
  cases.push_back({"MoeCapacityDropping", capacity});
  ModelSpec raw_gates = base;
  raw_gates.renormalize = false;
  raw_gates.ntk_alpha = 8.0;
  raw_gates.z_loss_weight = 0.05;
  raw_gates.capacity_factor = 0.75;
  raw_gates.n_kv_heads = 2;  // grouped-query attention: dk, dv sum over the heads sharing them
  cases.push_back({"MoeRawGatesZLossCapacityGqaNtkRope", raw_gates});
  ModelSpec dense = base;
  dense.moe = false;
  cases.push_back({"Dense", dense});
  return cases;
}

class WholeModelGradientTest : public ::testing::TestWithParam<GradientCase> {};

TEST_P(WholeModelGradientTest, EveryParameterTensorMatchesFiniteDifferences) {
  const ModelSpec& spec = GetParam().spec;
  const int64_t batch = 2;
  const int64_t seq = 6;
  auto model = build_model(spec, 21);
  const std::vector<int32_t> ids = random_ids(size_t(batch * seq), spec.vocab_size, 8);
  std::vector<int32_t> targets = shifted_targets(ids, batch, seq, spec.vocab_size, 9);
  targets[2] = -1;  // ignored: leaves the mean and passes no gradient

  const double loss = model->forward_loss(ids, targets, batch, seq, true, false);
  const double model_objective = loss + model->aux_loss();
  model->backward(1.0f);
  const HostWeights grads = read_grads(*model);

  ReferenceModel reference(spec, read_weights(*model));
  std::vector<int32_t> routing;
  const double reference_objective = reference.objective(ids, targets, batch, seq, &routing);
  ASSERT_NEAR(model_objective, reference_objective, 1e-5);
  if (spec.capacity_factor) {
    ASSERT_GT(model->aux_stats().front().dropped_fraction, 0.0) << "the case must drop slots";
  }

  const std::set<int32_t> used_rows(ids.begin(), ids.end());
  std::mt19937_64 rng(123);
  double worst_ratio = 0.0;  // |g - fd| / (tolerance), reported for calibration
  for (Parameter* p : model->parameters()) {
    SCOPED_TRACE(p->name);
    std::vector<double>& values = reference.weights().at(p->name);
    const std::vector<double>& grad = grads.at(p->name);
    const int64_t cols = p->shape.back();
    double largest_fd = 0.0;
    for (int entry = 0; entry < kEntriesPerTensor; ++entry) {
      size_t index = std::uniform_int_distribution<size_t>(0, values.size() - 1)(rng);
      if (p->is_embedding) {  // rows the batch never reads have a zero gradient: pick used rows
        auto row = used_rows.begin();
        std::advance(row, std::uniform_int_distribution<size_t>(0, used_rows.size() - 1)(rng));
        index = size_t(*row) * size_t(cols) + size_t(index % size_t(cols));
      }
      const double original = values[index];
      std::vector<int32_t> routing_plus;
      std::vector<int32_t> routing_minus;
      values[index] = original + kEps;
      const double plus = reference.objective(ids, targets, batch, seq, &routing_plus);
      values[index] = original - kEps;
      const double minus = reference.objective(ids, targets, batch, seq, &routing_minus);
      values[index] = original;
      ASSERT_EQ(routing_plus, routing) << "routing changed within +eps of entry " << index;
      ASSERT_EQ(routing_minus, routing) << "routing changed within -eps of entry " << index;

      const double fd = (plus - minus) / (2.0 * kEps);
      const double tolerance = kAbsTolerance + kRelTolerance * std::abs(fd);
      EXPECT_NEAR(grad[index], fd, tolerance) << "entry " << index;
      worst_ratio = std::max(worst_ratio, std::abs(grad[index] - fd) / tolerance);
      largest_fd = std::max(largest_fd, std::abs(fd));
    }
    // A tensor whose sampled entries all have zero gradient would pass vacuously.
    EXPECT_GT(largest_fd, 10 * kAbsTolerance) << "sampled entries carry no gradient";
  }
  RecordProperty("worst_error_over_tolerance", std::to_string(worst_ratio));
  std::printf("  worst |g - fd| / tolerance: %.3g\n", worst_ratio);
}

INSTANTIATE_TEST_SUITE_P(Models, WholeModelGradientTest, ::testing::ValuesIn(gradient_cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace nnkit::test
