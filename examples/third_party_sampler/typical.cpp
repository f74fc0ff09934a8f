// Purpose: `decode/typical`, a third-party nnkit sampler built against the installed SDK.
// Locally typical sampling: keeps the tokens whose surprisal -log p is closest to the entropy of
// the distribution, up to probability mass `mass` (see typical_filter.h), and filters the rest to
// -inf; the generator then samples from what is left (or takes the argmax if the chain has
// decode/greedy).
// Ownership: stateless apart from its option; const and thread-safe, as the Sampler contract asks.
#include <nnkit/plugin.h>
#include <nnkit/sampler.h>

#include <cstdint>
#include <span>
#include <vector>

#include "typical_filter.h"

namespace {

class TypicalSampler final : public nnkit::Sampler {
 public:
  // Options were validated against typical_options() (type, range) before this runs; checks the
  // declared range cannot express go through Options::fail, which names decode[i].mass and the
  // YAML position.
  explicit TypicalSampler(const nnkit::Options& options) : mass_(options.get_float("mass")) {
    if (!(mass_ > 0.0 && mass_ <= 1.0)) {
      options.fail("mass", "must be in (0, 1] (the probability mass of the typical set)");
    }
  }

  void apply(std::span<float> logits, const std::vector<int32_t>& /*history*/) const override {
    if (mass_ >= 1.0) return;  // the typical set with mass 1 is every token; skip the sort
    typical::filter(logits, mass_);
  }

 private:
  double mass_;
};

std::vector<nnkit::OptionSpec> typical_options() {
  return {{"mass", nnkit::OptionType::kFloat, "0.9", 0.0, 1.0,
           "probability mass of the typical set, in (0, 1]; 1 keeps every token"}};
}

// Called by the registry; throws nnkit::ConfigError (via Options::fail) on a bad option.
nnkit::Component* create_typical(const nnkit::CreateArgs& args) {
  return new TypicalSampler(args.options);
}

}  // namespace

NNKIT_PLUGIN(decode, typical, "0.1.0",
             "locally typical sampling: keeps tokens whose surprisal is near the entropy",
             &typical_options, &create_typical)
