// Purpose: the whole forward pass of the Transformer (MoE and dense, plain and NTK-scaled RoPE,
// with and without renormalised gates and capacity dropping) against the double-precision
// reference of reference_model.h: logits, mean cross-entropy, weighted auxiliary losses and
// per-layer routing statistics.
#include <gtest/gtest.h>

#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "model/model_test_util.h"
#include "model/reference_model.h"

namespace nnkit::test {
namespace {

constexpr double kLogitTolerance = 1e-4;  // max |logit - reference| (the brief's bound)
constexpr double kLossTolerance = 1e-5;   // mean CE and aux losses: averages of O(1) terms

struct ForwardCase {
  std::string name;
  ModelSpec spec;
};

// gtest prints the case by name in failure messages.
void PrintTo(const ForwardCase& c, std::ostream* os) {
  *os << c.name;
}

std::vector<ForwardCase> forward_cases() {
  std::vector<ForwardCase> cases;
  ModelSpec moe;
  moe.aux_loss_weight = 0.1;
  moe.z_loss_weight = 0.01;
  cases.push_back({"Moe", moe});
  ModelSpec moe_ntk = moe;
  moe_ntk.ntk_alpha = 8.0;
  moe_ntk.rope_base = 100.0;  // small base: positions 0..11 turn every frequency pair visibly
  cases.push_back({"MoeNtkRope", moe_ntk});
  ModelSpec not_renormalized = moe;
  not_renormalized.renormalize = false;
  not_renormalized.n_kv_heads = 2;  // grouped-query attention
  cases.push_back({"MoeRawGatesGqa", not_renormalized});
  ModelSpec capacity = moe;
  capacity.capacity_factor = 0.75;
  cases.push_back({"MoeCapacityDropping", capacity});
  ModelSpec dense;
  dense.moe = false;
  dense.vocab_size = 260;
  dense.hidden_dim = 32;
  dense.ffn_dim = 40;
  cases.push_back({"Dense", dense});
  return cases;
}

class ForwardReferenceTest : public ::testing::TestWithParam<ForwardCase> {};

TEST_P(ForwardReferenceTest, LogitsLossAndAuxMatchTheDoubleReference) {
  const ModelSpec& spec = GetParam().spec;
  auto model = build_model(spec, 11);
  const ReferenceModel reference(spec, read_weights(*model));
  const int64_t batch = 2;
  const int64_t seq = 12;
  const std::vector<int32_t> ids = random_ids(size_t(batch * seq), spec.vocab_size, 5);
  std::vector<int32_t> targets = shifted_targets(ids, batch, seq, spec.vocab_size, 6);
  targets[3] = -1;  // ignored targets leave the mean

  const ReferenceOutput expected = reference.forward(ids, batch, seq);
  const std::vector<float> logits = host_values(*model, model->logits(ids, batch, seq));
  ASSERT_EQ(logits.size(), expected.logits.size());
  EXPECT_LE(max_abs_diff(logits, expected.logits), kLogitTolerance);

  const double loss = model->forward_loss(ids, targets, batch, seq, false, false);
  EXPECT_NEAR(loss, reference.mean_cross_entropy(expected.logits, targets), kLossTolerance);
  EXPECT_NEAR(model->aux_loss(), expected.weighted_aux, kLossTolerance);

  const std::vector<AuxStats> stats = model->aux_stats();
  ASSERT_EQ(stats.size(), expected.layers.size());
  for (size_t layer = 0; layer < stats.size(); ++layer) {
    SCOPED_TRACE("layer " + std::to_string(layer));
    const ReferenceLayerStats& want = expected.layers[layer];
    EXPECT_NEAR(stats[layer].aux_loss, want.aux_loss, kLossTolerance);
    EXPECT_NEAR(stats[layer].z_loss, want.z_loss, kLossTolerance);
    EXPECT_DOUBLE_EQ(stats[layer].dropped_fraction, want.dropped_fraction);
    ASSERT_EQ(stats[layer].expert_fraction.size(), want.expert_fraction.size());
    for (size_t e = 0; e < want.expert_fraction.size(); ++e) {
      // f_i is a count over N*k stored in f32 on the device: one rounding, 2^-24 relative.
      EXPECT_NEAR(stats[layer].expert_fraction[e], want.expert_fraction[e],
                  6e-8 * want.expert_fraction[e]);
    }
  }
  if (spec.capacity_factor) {
    // The case is only meaningful if the limit actually drops something.
    EXPECT_GT(expected.layers.front().dropped_fraction, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ForwardReferenceTest, ::testing::ValuesIn(forward_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(ForwardReference, TrainingForwardReturnsTheSameLossAsEvaluation) {
  ModelSpec spec;
  auto model = build_model(spec, 3);
  const std::vector<int32_t> ids = random_ids(16, spec.vocab_size, 1);
  const std::vector<int32_t> targets = shifted_targets(ids, 2, 8, spec.vocab_size, 2);
  const double eval = model->forward_loss(ids, targets, 2, 8, false, false);
  const double train = model->forward_loss(ids, targets, 2, 8, true, false);
  EXPECT_EQ(eval, train);
  const double checkpointed = model->forward_loss(ids, targets, 2, 8, true, true);
  EXPECT_EQ(eval, checkpointed);
}

}  // namespace
}  // namespace nnkit::test
