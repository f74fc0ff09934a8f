// Purpose: the small test transformer (tests/model's ModelSpec, MoE and dense) built from its YAML
// once with `backend: {type: cpu}` and once with `backend: {type: cuda}`, the way the trainer
// builds it, from the same weights: one training forward gives the same loss and every parameter
// gradient agrees, and three AdamW steps on one batch give the same losses.
// Owned by the backend/cuda tests.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_parity.h"
#include "model/model_test_util.h"
#include "nnkit/config.h"
#include "nnkit/model.h"
#include "nnkit/optim.h"

namespace nnkit::test {
namespace {

using CudaModelParity = CudaParityTest;

// Forward loss relative tolerance (a mean of fp32 cross-entropies through 2 blocks).
constexpr double kLossRtol = 1e-4;
// Gradients: per tensor, max |cuda - cpu| over max |cpu| (gradients pass through routing
// softmaxes, attention and the LM head, summing over the batch).
constexpr double kGradientRtol = 1e-3;
// Losses after AdamW steps (the updates divide by sqrt(v), which magnifies small differences).
constexpr double kTrainingLossRtol = 1e-3;

struct ModelCase {
  const char* name;
  ModelSpec spec;
};

std::vector<ModelCase> model_cases() {
  ModelSpec moe;  // 2 layers, 4 experts top-2, MQA (4 heads, 1 KV head)
  moe.z_loss_weight = 0.01;
  ModelSpec dense;
  dense.moe = false;
  dense.n_kv_heads = 2;  // GQA
  return {{"moe_mqa", moe}, {"dense_gqa", dense}};
}

struct BuiltModel {
  std::shared_ptr<Backend> backend;
  std::unique_ptr<Transformer> model;
  std::shared_ptr<Optimizer> optimizer;
};

// model_yaml(spec) with `backend: {type: <backend_type>}`, resolved through the registry; the
// backend, model and optimizer are created from the resolved config as the trainer does, and
// the weights are init_random(seed) then overwrite_with_test_weights(seed).
BuiltModel build_from_config(const ModelSpec& spec, const std::string& backend_type, uint64_t seed,
                             const std::string& backend_options = "") {
  std::string yaml = model_yaml(spec);
  const std::string cpu_backend_line = "backend: {type: cpu}";
  const size_t at = yaml.find(cpu_backend_line);
  if (at == std::string::npos) {
    throw std::runtime_error("model_yaml() no longer contains '" + cpu_backend_line + "'");
  }
  yaml.replace(at, cpu_backend_line.size(),
               "backend: {type: " + backend_type + backend_options + "}");
  const RunConfig config =
      resolve_config(ConfigDocument::parse(yaml, backend_type + "_model.yaml"), registry());

  BuiltModel built;
  const PluginChoice& b = config.backend;
  built.backend = registry().create<Backend>(b.kind, b.name, CreateArgs{b.options, {}, nullptr});
  built.model = std::make_unique<Transformer>(config, registry(), built.backend);
  built.model->allocate(true);
  built.model->init_random(seed);
  overwrite_with_test_weights(*built.model, seed);
  built.model->refresh_compute_copies();  // the bf16 copies follow the overwritten masters
  const PluginChoice& o = config.train.optimizer;
  built.optimizer =
      registry().create<Optimizer>(o.kind, o.name, CreateArgs{o.options, {}, built.backend.get()});
  return built;
}

// max |a - b| / max |b| over one tensor (the difference alone when b is all zero).
double relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return INFINITY;
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    if (std::isnan(d)) return INFINITY;
    diff = std::max(diff, d);
    scale = std::max(scale, std::abs(b[i]));
  }
  return scale > 0.0 ? diff / scale : diff;
}

TEST_F(CudaModelParity, ForwardLossAndEveryParameterGradientMatchCpu) {
  for (const ModelCase& c : model_cases()) {
    SCOPED_TRACE(c.name);
    const ModelSpec& spec = c.spec;
    BuiltModel on_cpu = build_from_config(spec, "cpu", 5);
    BuiltModel on_cuda = build_from_config(spec, "cuda", 5, ", precision: fp32");
    ASSERT_TRUE(on_cpu.backend->device().is_host());
    ASSERT_EQ(on_cuda.backend->device().type, DeviceType::kCuda) << "the config chose the backend";
    ASSERT_EQ(read_weights(*on_cuda.model), read_weights(*on_cpu.model)) << "same start";

    const int64_t batch = 2, seq = 12;
    const std::vector<int32_t> ids = random_ids(size_t(batch * seq), spec.vocab_size, 3);
    std::vector<int32_t> targets = shifted_targets(ids, batch, seq, spec.vocab_size, 4);
    targets[5] = -1;  // ignored target

    const double cpu_loss = on_cpu.model->forward_loss(ids, targets, batch, seq, true, false);
    const double cuda_loss = on_cuda.model->forward_loss(ids, targets, batch, seq, true, false);
    EXPECT_NEAR(cuda_loss, cpu_loss, kLossRtol * std::abs(cpu_loss));
    EXPECT_NEAR(on_cuda.model->aux_loss(), on_cpu.model->aux_loss(),
                kLossRtol * std::abs(on_cpu.model->aux_loss()) + 1e-7);

    on_cpu.model->backward(1.0f);
    on_cuda.model->backward(1.0f);
    const HostWeights cpu_grads = read_grads(*on_cpu.model);
    const HostWeights cuda_grads = read_grads(*on_cuda.model);
    ASSERT_FALSE(cpu_grads.empty());
    ASSERT_EQ(cuda_grads.size(), cpu_grads.size());
    for (const auto& [name, want] : cpu_grads) {
      ASSERT_TRUE(cuda_grads.count(name)) << name;
      EXPECT_LE(relative_difference(cuda_grads.at(name), want), kGradientRtol) << name;
    }
  }
}

TEST_F(CudaModelParity, ThreeAdamwStepsGiveMatchingLosses) {
  const double lr = 1e-2;  // large enough that three steps move the loss well past the tolerance
  for (const ModelCase& c : model_cases()) {
    SCOPED_TRACE(c.name);
    const ModelSpec& spec = c.spec;
    const int64_t batch = 2, seq = 12;
    const std::vector<int32_t> ids = random_ids(size_t(batch * seq), spec.vocab_size, 13);
    const std::vector<int32_t> targets = shifted_targets(ids, batch, seq, spec.vocab_size, 14);

    // Losses before each of 3 steps on the same batch, and after the last.
    auto train = [&](const std::string& backend_type) {
      BuiltModel built = build_from_config(spec, backend_type, 11,
                                           backend_type == "cuda" ? ", precision: fp32" : "");
      std::vector<double> losses;
      const std::vector<Parameter*> params = built.model->parameters();
      std::vector<Tensor> grads;
      for (Parameter* p : params) grads.push_back(p->grad);
      Tensor sum_squares = built.backend->empty({1});
      for (int step = 0; step < 3; ++step) {
        losses.push_back(built.model->forward_loss(ids, targets, batch, seq, true, false));
        built.model->backward(1.0f);
        // The trainer's path: norm and clip on the device, fused update, grads zeroed.
        built.backend->fill(sum_squares, 0.0f);
        built.backend->sum_squares_multi(grads, sum_squares);
        built.optimizer->step_on_device(*built.backend, params, lr, sum_squares, 1.0f, 1.0f);
      }
      losses.push_back(built.model->forward_loss(ids, targets, batch, seq, false, false));
      return losses;
    };
    const std::vector<double> cpu_losses = train("cpu");
    const std::vector<double> cuda_losses = train("cuda");
    ASSERT_EQ(cuda_losses.size(), cpu_losses.size());
    for (size_t i = 0; i < cpu_losses.size(); ++i) {
      EXPECT_NEAR(cuda_losses[i], cpu_losses[i], kTrainingLossRtol * std::abs(cpu_losses[i]))
          << "loss " << (i == 0 ? "before the first step" : "after step " + std::to_string(i));
    }
    // The steps must matter: otherwise equal losses would not show equal updates.
    EXPECT_GT(cpu_losses.front() - cpu_losses.back(), 10 * kTrainingLossRtol * cpu_losses.front());
  }
}

// bf16 against the CPU's fp32 on the same weights. Bounds: the loss (mean CE, 2 blocks, 24
// tokens) within 1%; each parameter's gradient within 10% relative L2 error, ||cuda - cpu|| /
// ||cpu|| (activations are rounded to 8 mantissa bits at every op; a token whose top-2 experts
// nearly tie may be routed differently, which moves those experts' gradients most). The errors
// measured are printed.
TEST_F(CudaModelParity, Bf16LossAndGradientsTrackFp32) {
  constexpr double kBf16LossRtol = 1e-2;
  constexpr double kBf16GradientRelL2 = 0.1;
  for (const ModelCase& c : model_cases()) {
    SCOPED_TRACE(c.name);
    const ModelSpec& spec = c.spec;
    BuiltModel on_cpu = build_from_config(spec, "cpu", 5);
    BuiltModel on_cuda = build_from_config(spec, "cuda", 5, ", precision: bf16");
    ASSERT_EQ(on_cuda.backend->compute_dtype(), DType::kBF16);
    const int64_t batch = 2, seq = 12;
    const std::vector<int32_t> ids = random_ids(size_t(batch * seq), spec.vocab_size, 3);
    const std::vector<int32_t> targets = shifted_targets(ids, batch, seq, spec.vocab_size, 4);
    const double cpu_loss = on_cpu.model->forward_loss(ids, targets, batch, seq, true, false);
    const double cuda_loss = on_cuda.model->forward_loss(ids, targets, batch, seq, true, false);
    std::printf("[%s] bf16 loss %.6f, fp32 CPU %.6f (rel %.2e)\n", c.name, cuda_loss, cpu_loss,
                std::abs(cuda_loss - cpu_loss) / cpu_loss);
    EXPECT_NEAR(cuda_loss, cpu_loss, kBf16LossRtol * cpu_loss);
    on_cpu.model->backward(1.0f);
    on_cuda.model->backward(1.0f);
    const HostWeights cpu_grads = read_grads(*on_cpu.model);
    const HostWeights cuda_grads = read_grads(*on_cuda.model);
    double worst = 0.0;
    std::string worst_name;
    for (const auto& [name, want] : cpu_grads) {
      ASSERT_TRUE(cuda_grads.count(name)) << name;
      const std::vector<double>& got = cuda_grads.at(name);
      double diff = 0.0, norm = 0.0;
      for (size_t i = 0; i < want.size(); ++i) {
        diff += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
      }
      const double rel = norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
      if (rel > worst) {
        worst = rel;
        worst_name = name;
      }
      EXPECT_LE(rel, kBf16GradientRelL2) << name;
    }
    std::printf("[%s] bf16 gradients: worst relative L2 error %.3e (%s)\n", c.name, worst,
                worst_name.c_str());
  }
}

}  // namespace
}  // namespace nnkit::test
