// Purpose: `decode/temperature`: divides the logits by `value` (< 1 sharpens, > 1 flattens).
// Temperature 0 is not a limit this plugin can express; that is decode/greedy's job.
// Ownership: stateless apart from its option; const and thread-safe.
#include <cstdint>
#include <span>
#include <vector>

#include "nnkit/plugin.h"
#include "nnkit/sampler.h"

namespace nnkit::decode {
namespace {

class TemperatureSampler final : public Sampler {
 public:
  explicit TemperatureSampler(const Options& options) : value_(options.get_float("value")) {
    // The declared minimum is 0 (inclusive), so 0 reaches here; negatives only when a caller
    // builds Options without the core's range check. Both get the same advice.
    if (!(value_ > 0.0)) {
      options.fail("value",
                   "must be > 0; for temperature 0 (always the most likely token) use "
                   "decode/greedy instead");
    }
  }

  void apply(std::span<float> logits, const std::vector<int32_t>&) const override {
    const float inverse = static_cast<float>(1.0 / value_);
    for (float& x : logits) x *= inverse;
  }

 private:
  double value_;
};

std::vector<OptionSpec> temperature_options() {
  return {{"value", OptionType::kFloat, "1.0", 0.0, std::nullopt,
           "divides the logits; must be > 0 (use decode/greedy for temperature 0)"}};
}

Component* create_temperature(const CreateArgs& args) {
  return new TemperatureSampler(args.options);
}

}  // namespace
}  // namespace nnkit::decode

NNKIT_PLUGIN(decode, temperature, "0.1.0", "scales logits by 1/temperature",
             &nnkit::decode::temperature_options, &nnkit::decode::create_temperature)
