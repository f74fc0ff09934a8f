// Purpose: `decode/min_p`: filters tokens whose probability is below p times the probability of
// the most likely token (the threshold adapts to how confident the model is).
// Ownership: stateless apart from its option; const and thread-safe.
#include <cstdint>
#include <span>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/plugin.h"
#include "nnkit/sampler.h"
#include "support/logit_row.h"

namespace nnkit::decode {
namespace {

class MinPSampler final : public Sampler {
 public:
  explicit MinPSampler(const Options& options) : p_(options.get_float("p")) {
    if (!(p_ >= 0.0 && p_ <= 1.0)) options.fail("p", "must be in [0, 1]");
  }

  void apply(std::span<float> logits, const std::vector<int32_t>&) const override {
    if (p_ <= 0.0) return;
    // prob_i / prob_max is the same with or without normalisation, so skip the softmax sum.
    const std::vector<double> relative = relative_probabilities(logits);
    for (size_t i = 0; i < logits.size(); ++i) {
      if (relative[i] < p_) logits[i] = kFiltered;
    }
  }

  bool apply_device(Backend& backend, const Tensor& logits,
                    const DeviceSamplingContext&) const override {
    backend.min_p_filter_rows(logits, p_);
    return true;
  }

 private:
  double p_;
};

std::vector<OptionSpec> min_p_options() {
  return {{"p", OptionType::kFloat, "0.05", 0.0, 1.0,
           "drops tokens less likely than p times the most likely one; 0 keeps all"}};
}

Component* create_min_p(const CreateArgs& args) {
  return new MinPSampler(args.options);
}

}  // namespace
}  // namespace nnkit::decode

NNKIT_PLUGIN(decode, min_p, "0.1.0", "keeps tokens at least p times as likely as the best",
             &nnkit::decode::min_p_options, &nnkit::decode::create_min_p)
