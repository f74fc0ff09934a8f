// Purpose: `optim/lion`, an example optimizer built against the installed SDK: Lion (Chen et al.
// 2023), p -= lr * (sign(b1 m + (1 - b1) g) + wd p), then m = b2 m + (1 - b2) g, one fused
// Backend::lion_update per parameter. The decay rule is nnkit's (docs/conventions.md): norm
// scales (decay = false) and the embedding are not decayed unless decay_norms_and_embeddings.
// Ownership: owns its moment tensors (f32, allocated lazily on the parameters' backend, one per
// parameter in the order step() first sees them); never the parameters.
// Thread-safety: none; the trainer's thread drives it.
#include <nnkit/error.h>
#include <nnkit/optim.h>
#include <nnkit/plugin.h>

#include <string>
#include <utility>
#include <vector>

namespace {

class Lion final : public nnkit::Optimizer {
 public:
  explicit Lion(const nnkit::CreateArgs& args)
      : lr_(args.options.get_float("lr")),
        beta1_(static_cast<float>(args.options.get_float("beta1"))),
        beta2_(static_cast<float>(args.options.get_float("beta2"))),
        weight_decay_(static_cast<float>(args.options.get_float("weight_decay"))),
        decay_all_(args.options.get_bool("decay_norms_and_embeddings")) {
    if (!(beta1_ < 1.0f)) args.options.fail("beta1", "must be < 1");
    if (!(beta2_ < 1.0f)) args.options.fail("beta2", "must be < 1");
  }

  double base_lr() const override { return lr_; }

  void step(nnkit::Backend& backend, const std::vector<nnkit::Parameter*>& params, double lr,
            float grad_scale) override {
    ensure_state(backend, params);
    for (size_t i = 0; i < params.size(); ++i) {
      nnkit::Parameter& p = *params[i];
      nnkit::MomentumStep s;
      s.lr = static_cast<float>(lr);
      s.beta1 = beta1_;
      s.beta2 = beta2_;
      s.weight_decay = decays(p) ? weight_decay_ : 0.0f;
      s.grad_scale = grad_scale;
      backend.lion_update(p.value, p.grad, moments_[i], s);
    }
    ++steps_;
  }

  int64_t step_count() const override { return steps_; }
  void set_step_count(int64_t steps) override { steps_ = steps; }

  std::vector<std::pair<std::string, nnkit::Tensor>> state(
      nnkit::Backend& backend, const std::vector<nnkit::Parameter*>& params) override {
    ensure_state(backend, params);
    std::vector<std::pair<std::string, nnkit::Tensor>> out;
    for (size_t i = 0; i < params.size(); ++i) {
      out.emplace_back("exp_avg." + params[i]->name, moments_[i]);
    }
    return out;
  }

 private:
  bool decays(const nnkit::Parameter& p) const {
    return decay_all_ || (p.decay && !p.is_embedding);
  }

  void ensure_state(nnkit::Backend& backend, const std::vector<nnkit::Parameter*>& params) {
    if (moments_.size() == params.size()) return;
    if (!moments_.empty()) {
      throw nnkit::Error(id(), "called with " + std::to_string(params.size()) +
                                   " parameters after " + std::to_string(moments_.size()));
    }
    for (nnkit::Parameter* p : params) moments_.push_back(backend.zeros(p->shape));
  }

  double lr_;
  float beta1_, beta2_, weight_decay_;
  bool decay_all_;
  int64_t steps_ = 0;
  std::vector<nnkit::Tensor> moments_;  // (shape of each parameter) f32 m
};

std::vector<nnkit::OptionSpec> lion_options() {
  using nnkit::OptionType;
  return {
      {"lr", OptionType::kFloat, "1e-4", 0.0, std::nullopt,
       "peak learning rate (Lion wants ~3-10x less than AdamW)"},
      {"beta1", OptionType::kFloat, "0.9", 0.0, 1.0, "interpolation of the update direction"},
      {"beta2", OptionType::kFloat, "0.99", 0.0, 1.0, "decay of the moment"},
      {"weight_decay", OptionType::kFloat, "0.1", 0.0, std::nullopt, "decoupled weight decay"},
      {"decay_norms_and_embeddings", OptionType::kBool, "false", std::nullopt, std::nullopt,
       "also decay norm scales and the embedding"},
  };
}

nnkit::Component* create_lion(const nnkit::CreateArgs& args) {
  return new Lion(args);
}

}  // namespace

NNKIT_PLUGIN(optim, lion, "0.1.0", "Lion: sign of interpolated momentum, decoupled decay",
             &lion_options, &create_lion)
