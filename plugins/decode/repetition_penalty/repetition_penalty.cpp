// Purpose: `decode/repetition_penalty` (CTRL, Keskar et al. 2019): makes every token already in
// the history less likely: a positive logit is divided by the penalty, a negative one multiplied,
// so penalty > 1 always moves the logit down. Each distinct id is penalised once, however often
// it occurs.
// Ownership: stateless apart from its option; const and thread-safe.
#include <cstdint>
#include <span>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/plugin.h"
#include "nnkit/sampler.h"

namespace nnkit::decode {
namespace {

class RepetitionPenaltySampler final : public Sampler {
 public:
  explicit RepetitionPenaltySampler(const Options& options)
      : penalty_(options.get_float("penalty")) {
    if (!(penalty_ > 0.0)) {
      options.fail("penalty", "must be > 0 (1 disables it; > 1 discourages repeats)");
    }
  }

  void apply(std::span<float> logits, const std::vector<int32_t>& history) const override {
    const float penalty = static_cast<float>(penalty_);
    std::vector<bool> penalised(logits.size(), false);
    for (int32_t id : history) {
      // Ids outside this row (padding markers, another vocabulary) have no logit to penalise.
      if (id < 0 || static_cast<size_t>(id) >= logits.size()) continue;
      const size_t i = static_cast<size_t>(id);
      if (penalised[i]) continue;
      penalised[i] = true;
      logits[i] = logits[i] > 0.0f ? logits[i] / penalty : logits[i] * penalty;
    }
  }

  // Needs the history on the device; without it the chain runs on the host.
  bool apply_device(Backend& backend, const Tensor& logits,
                    const DeviceSamplingContext& ctx) const override {
    if (!ctx.history.defined() || !ctx.lengths.defined()) return false;
    backend.repetition_penalty_rows(logits, ctx.history, ctx.lengths, static_cast<float>(penalty_));
    return true;
  }

 private:
  double penalty_;
};

std::vector<OptionSpec> repetition_penalty_options() {
  return {{"penalty", OptionType::kFloat, "1.1", 0.0, std::nullopt,
           "> 0; logits of tokens already seen are divided (if positive) or multiplied (if "
           "negative) by it"}};
}

Component* create_repetition_penalty(const CreateArgs& args) {
  return new RepetitionPenaltySampler(args.options);
}

}  // namespace
}  // namespace nnkit::decode

NNKIT_PLUGIN(decode, repetition_penalty, "0.1.0", "CTRL repetition penalty on seen tokens",
             &nnkit::decode::repetition_penalty_options, &nnkit::decode::create_repetition_penalty)
