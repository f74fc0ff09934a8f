// Purpose: training modes that must not change the gradient. Activation checkpointing (keep only
// each block's input, recompute the block in backward) gives the same loss and gradients as the
// plain backward; gradient accumulation over 4 micro-batches with backward(0.25) equals one batch
// of all the rows with backward(1.0), up to fp32 rounding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "model/model_test_util.h"

namespace nnkit::test {
namespace {

// Largest |a - b| over all tensors, relative to the largest |b| of the same tensor.
double worst_relative_difference(const HostWeights& a, const HostWeights& b, std::string* where) {
  double worst = 0.0;
  for (const auto& [name, want] : b) {
    const std::vector<double>& got = a.at(name);
    double scale = 0.0;
    double diff = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
      scale = std::max(scale, std::abs(want[i]));
      diff = std::max(diff, std::abs(got[i] - want[i]));
    }
    const double relative = scale > 0.0 ? diff / scale : diff;
    if (!(relative <= worst)) {
      worst = relative;
      *where = name;
    }
  }
  return worst;
}

TEST(ActivationCheckpointing, SameLossAndGradientsAsThePlainBackward) {
  ModelSpec moe;
  moe.aux_loss_weight = 0.1;
  moe.z_loss_weight = 0.01;
  moe.capacity_factor = 1.0;
  ModelSpec dense = moe;
  dense.moe = false;
  for (const ModelSpec& spec : {moe, dense}) {
    SCOPED_TRACE(spec.moe ? "moe" : "dense");
    auto model = build_model(spec, 5);
    const std::vector<int32_t> ids = random_ids(2 * 10, spec.vocab_size, 3);
    const std::vector<int32_t> targets = shifted_targets(ids, 2, 10, spec.vocab_size, 4);

    const double plain_loss = model->forward_loss(ids, targets, 2, 10, true, false);
    const double plain_aux = model->aux_loss();
    model->backward(1.0f);
    const HostWeights plain = read_grads(*model);

    model->zero_grads();
    const double checkpointed_loss = model->forward_loss(ids, targets, 2, 10, true, true);
    EXPECT_EQ(model->aux_loss(), plain_aux);
    model->backward(1.0f);
    const HostWeights checkpointed = read_grads(*model);

    EXPECT_EQ(checkpointed_loss, plain_loss);
    // The recompute runs the same ops on the same inputs, so the gradients are bit-identical;
    // the bound below is the brief's, the property we observe is equality.
    for (const auto& [name, want] : plain) {
      const std::vector<double>& got = checkpointed.at(name);
      double diff = 0.0;
      for (size_t i = 0; i < want.size(); ++i) diff = std::max(diff, std::abs(got[i] - want[i]));
      EXPECT_LE(diff, 1e-6) << name;
      EXPECT_EQ(got, want) << name << " differs (not bit-identical)";
    }
  }
}

// 4 micro-batches of 2 rows with backward(0.25) accumulate the gradient of the mean over all 8
// rows, because every row has the same number of (valid) targets.
void expect_accumulation_matches_one_batch(const ModelSpec& spec) {
  const int64_t micro_batch = 2;
  const int64_t micro_batches = 4;
  const int64_t seq = 8;
  const int64_t rows = micro_batch * micro_batches;
  const std::vector<int32_t> ids = random_ids(size_t(rows * seq), spec.vocab_size, 31);
  const std::vector<int32_t> targets = shifted_targets(ids, rows, seq, spec.vocab_size, 32);

  auto model = build_model(spec, 9);
  const double full_loss = model->forward_loss(ids, targets, rows, seq, true, false);
  model->backward(1.0f);
  const HostWeights one_batch = read_grads(*model);

  model->zero_grads();
  double mean_loss = 0.0;
  const size_t chunk = size_t(micro_batch * seq);
  for (int64_t m = 0; m < micro_batches; ++m) {
    const std::vector<int32_t> part_ids(ids.begin() + m * chunk, ids.begin() + (m + 1) * chunk);
    const std::vector<int32_t> part_targets(targets.begin() + m * chunk,
                                            targets.begin() + (m + 1) * chunk);
    mean_loss += model->forward_loss(part_ids, part_targets, micro_batch, seq, true, false) /
                 double(micro_batches);
    model->backward(1.0f / float(micro_batches));
  }
  const HostWeights accumulated = read_grads(*model);

  EXPECT_NEAR(mean_loss, full_loss, 1e-6 * full_loss);
  std::string where;
  const double worst = worst_relative_difference(accumulated, one_batch, &where);
  EXPECT_LE(worst, 1e-5) << "worst tensor: " << where;
}

TEST(GradientAccumulation, DenseMicroBatchesEqualOneBatch) {
  ModelSpec spec;
  spec.moe = false;
  expect_accumulation_matches_one_batch(spec);
}

TEST(GradientAccumulation, MoeMicroBatchesEqualOneBatchWithoutAuxLoss) {
  ModelSpec spec;
  // The load-balancing loss is E * sum_i f_i P_i over the tokens of one forward: a product of two
  // batch means, so the 4x batch's aux loss is not the mean of the 4 micro-batches' aux losses
  // (nor are their gradients). With weight 0 both sides differentiate only the mean CE. Capacity
  // dropping is off (dropless) for the same reason: capacity depends on the batch's size.
  spec.aux_loss_weight = 0.0;
  spec.capacity_factor.reset();
  expect_accumulation_matches_one_batch(spec);
}

}  // namespace
}  // namespace nnkit::test
