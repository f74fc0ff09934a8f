// Purpose: tests of `optim/adamw` on the CPU backend plugin: one and several steps against a scalar
// reference of the update (bias correction, decoupled weight decay only where configured, the
// grad scale), the named state tensors, and the step count.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/layer.h"
#include "nnkit/optim.h"
#include "support/test_support.h"

namespace nnkit {
namespace {

struct Hyper {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// One parameter's host mirror, updated by the formula in backend.h / the spec, in double.
struct ReferenceParam {
  std::vector<double> value, m, v;

  void step(const std::vector<float>& grad, double lr, double grad_scale, int64_t t, const Hyper& h,
            bool decays) {
    const double wd = decays ? h.weight_decay : 0.0;
    const double correction1 = 1.0 - std::pow(h.beta1, static_cast<double>(t));
    const double correction2 = 1.0 - std::pow(h.beta2, static_cast<double>(t));
    for (size_t i = 0; i < value.size(); ++i) {
      const double g = grad[i] * grad_scale;
      m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
      v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
      const double m_hat = m[i] / correction1;
      const double v_hat = v[i] / correction2;
      value[i] -= lr * (m_hat / (std::sqrt(v_hat) + h.eps) + wd * value[i]);
    }
  }
};

class AdamWTest : public ::testing::Test {
 protected:
  void SetUp() override { backend_ = test::cpu_backend(); }

  // A weight (decays), a norm weight (decay false) and an embedding (is_embedding).
  void add_params() {
    add_param("proj.weight", {3, 4}, /*decay=*/true, /*embedding=*/false, 1);
    add_param("norm.weight", {4}, false, false, 2);
    add_param("embed_tokens.weight", {5, 2}, true, true, 3);
  }

  void add_param(const std::string& name, Shape shape, bool decay, bool embedding, uint64_t seed) {
    auto param = std::make_unique<Parameter>();
    param->name = name;
    param->shape = shape;
    param->decay = decay;
    param->is_embedding = embedding;
    const std::vector<float> init = test::random_values(size_t(shape_numel(shape)), seed);
    param->value = test::tensor_from(*backend_, init, shape);
    param->grad = backend_->zeros(shape);
    ReferenceParam ref;
    ref.value.assign(init.begin(), init.end());
    ref.m.assign(init.size(), 0.0);
    ref.v.assign(init.size(), 0.0);
    reference_.push_back(ref);
    pointers_.push_back(param.get());
    params_.push_back(std::move(param));
  }

  // Fresh gradients for step `t`, identical on both sides.
  std::vector<std::vector<float>> set_grads(uint64_t t) {
    std::vector<std::vector<float>> grads;
    for (size_t p = 0; p < params_.size(); ++p) {
      std::vector<float> g =
          test::random_values(size_t(params_[p]->grad.numel()), 100 * t + p, 2.0f);
      backend_->copy_from_host(params_[p]->grad, g.data());
      grads.push_back(std::move(g));
    }
    return grads;
  }

  void expect_matches_reference(const std::string& when) {
    for (size_t p = 0; p < params_.size(); ++p) {
      const std::vector<float> got = test::to_vector(*backend_, params_[p]->value);
      for (size_t i = 0; i < got.size(); ++i) {
        const double want = reference_[p].value[i];
        ASSERT_NEAR(got[i], want, 1e-5 * (1.0 + std::abs(want)))
            << when << ": " << params_[p]->name << "[" << i << "]";
      }
    }
  }

  std::shared_ptr<Backend> backend_;
  std::vector<std::unique_ptr<Parameter>> params_;
  std::vector<Parameter*> pointers_;
  std::vector<ReferenceParam> reference_;
};

TEST_F(AdamWTest, DefaultsAndBaseLr) {
  auto adamw = test::create<Optimizer>("optim", "adamw");
  EXPECT_DOUBLE_EQ(adamw->base_lr(), 1e-4);
  EXPECT_EQ(adamw->step_count(), 0);
  auto custom = test::create<Optimizer>("optim", "adamw", {{"lr", "3e-3"}});
  EXPECT_DOUBLE_EQ(custom->base_lr(), 3e-3);
}

TEST_F(AdamWTest, OneStepMatchesReference) {
  add_params();
  auto adamw = test::create<Optimizer>("optim", "adamw", {{"lr", "0.01"}});
  const auto grads = set_grads(1);
  adamw->step(*backend_, pointers_, 0.01, 1.0f);
  EXPECT_EQ(adamw->step_count(), 1);
  const Hyper h;
  for (size_t p = 0; p < params_.size(); ++p) {
    const bool decays = params_[p]->decay && !params_[p]->is_embedding;
    reference_[p].step(grads[p], 0.01, 1.0, 1, h, decays);
  }
  expect_matches_reference("step 1");
}

TEST_F(AdamWTest, SeveralStepsWithScheduleAndGradScale) {
  add_params();
  Hyper h;
  h.beta1 = 0.8;
  h.beta2 = 0.99;
  h.weight_decay = 0.3;
  auto adamw = test::create<Optimizer>(
      "optim", "adamw", {{"beta1", "0.8"}, {"beta2", "0.99"}, {"weight_decay", "0.3"}});
  for (int64_t t = 1; t <= 5; ++t) {
    const double lr = 0.02 / static_cast<double>(t);  // as a schedule would pass it
    const float grad_scale = 0.5f;
    const auto grads = set_grads(static_cast<uint64_t>(t));
    adamw->step(*backend_, pointers_, lr, grad_scale);
    for (size_t p = 0; p < params_.size(); ++p) {
      const bool decays = params_[p]->decay && !params_[p]->is_embedding;
      reference_[p].step(grads[p], lr, grad_scale, t, h, decays);
    }
    expect_matches_reference("step " + std::to_string(t));
  }
  EXPECT_EQ(adamw->step_count(), 5);
}

TEST_F(AdamWTest, DecayNormsAndEmbeddingsWhenAsked) {
  add_params();
  auto adamw = test::create<Optimizer>(
      "optim", "adamw", {{"weight_decay", "0.5"}, {"decay_norms_and_embeddings", "true"}});
  Hyper h;
  h.weight_decay = 0.5;
  for (int64_t t = 1; t <= 2; ++t) {
    const auto grads = set_grads(static_cast<uint64_t>(t));
    adamw->step(*backend_, pointers_, 0.05, 1.0f);
    for (size_t p = 0; p < params_.size(); ++p) reference_[p].step(grads[p], 0.05, 1.0, t, h, true);
  }
  expect_matches_reference("all decay");
}

TEST_F(AdamWTest, ZeroGradientMovesOnlyDecayedParameters) {
  add_params();
  auto adamw = test::create<Optimizer>("optim", "adamw", {{"weight_decay", "0.1"}});
  std::vector<std::vector<float>> before;
  for (Parameter* p : pointers_) before.push_back(test::to_vector(*backend_, p->value));
  adamw->step(*backend_, pointers_, 0.1, 1.0f);  // grads are zero
  for (size_t p = 0; p < params_.size(); ++p) {
    const std::vector<float> after = test::to_vector(*backend_, pointers_[p]->value);
    const bool decays = p == 0;  // only proj.weight
    for (size_t i = 0; i < after.size(); ++i) {
      const float want = decays ? before[p][i] * (1.0f - 0.1f * 0.1f) : before[p][i];
      EXPECT_NEAR(after[i], want, 1e-6) << pointers_[p]->name;
    }
  }
}

TEST_F(AdamWTest, StateNamesSizesAndValues) {
  add_params();
  auto adamw = test::create<Optimizer>("optim", "adamw");
  // Allocated lazily, as zeros, by state() before any step (a checkpoint restore does this).
  auto state = adamw->state(*backend_, pointers_);
  ASSERT_EQ(state.size(), 2 * params_.size());
  for (size_t p = 0; p < params_.size(); ++p) {
    EXPECT_EQ(state[2 * p].first, "exp_avg." + params_[p]->name);
    EXPECT_EQ(state[2 * p + 1].first, "exp_avg_sq." + params_[p]->name);
    for (size_t k = 0; k < 2; ++k) {
      const Tensor& t = state[2 * p + k].second;
      EXPECT_EQ(t.shape(), params_[p]->shape);
      EXPECT_EQ(t.dtype(), DType::kF32);
      for (float x : test::to_vector(*backend_, t)) EXPECT_EQ(x, 0.0f);
    }
  }

  const auto grads = set_grads(1);
  adamw->step(*backend_, pointers_, 1e-3, 1.0f);
  const Hyper h;
  for (size_t p = 0; p < params_.size(); ++p) {
    reference_[p].step(grads[p], 1e-3, 1.0, 1, h, params_[p]->decay && !params_[p]->is_embedding);
  }
  // The same tensors, now holding the moments the step wrote.
  auto after = adamw->state(*backend_, pointers_);
  for (size_t p = 0; p < params_.size(); ++p) {
    EXPECT_EQ(after[2 * p].second.storage(), state[2 * p].second.storage());
    const std::vector<float> m = test::to_vector(*backend_, after[2 * p].second);
    const std::vector<float> v = test::to_vector(*backend_, after[2 * p + 1].second);
    for (size_t i = 0; i < m.size(); ++i) {
      EXPECT_NEAR(m[i], reference_[p].m[i], 1e-6);
      EXPECT_NEAR(v[i], reference_[p].v[i], 1e-6);
    }
  }
}

TEST_F(AdamWTest, RestoredStepCountDrivesBiasCorrection) {
  add_params();
  auto adamw = test::create<Optimizer>("optim", "adamw");
  adamw->set_step_count(9);
  EXPECT_EQ(adamw->step_count(), 9);
  const auto grads = set_grads(1);
  adamw->step(*backend_, pointers_, 0.01, 1.0f);
  EXPECT_EQ(adamw->step_count(), 10);
  const Hyper h;
  for (size_t p = 0; p < params_.size(); ++p) {
    reference_[p].step(grads[p], 0.01, 1.0, 10, h, params_[p]->decay && !params_[p]->is_embedding);
  }
  expect_matches_reference("step 10");
  EXPECT_THROW(adamw->set_step_count(-1), Error);
}

TEST(AdamWOptions, InvalidValuesAreConfigErrors) {
  // Outside the declared ranges (the core's check) ...
  EXPECT_THROW(test::create<Optimizer>("optim", "adamw", {{"lr", "-1"}}), ConfigError);
  EXPECT_THROW(test::create<Optimizer>("optim", "adamw", {{"weight_decay", "-0.1"}}), ConfigError);
  // ... and inside them but refused by the plugin (exclusive ends).
  EXPECT_THROW(test::create<Optimizer>("optim", "adamw", {{"lr", "0"}}), ConfigError);
  EXPECT_THROW(test::create<Optimizer>("optim", "adamw", {{"beta1", "1.0"}}), ConfigError);
  EXPECT_THROW(test::create<Optimizer>("optim", "adamw", {{"beta2", "1"}}), ConfigError);
  EXPECT_THROW(test::create<Optimizer>("optim", "adamw", {{"eps", "0"}}), ConfigError);
}

}  // namespace
}  // namespace nnkit
