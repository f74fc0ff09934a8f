// Purpose: `decode/temperature`: divides the logits by `value` (< 1 sharpens, > 1 flattens).
// Temperature 0 is not a limit this plugin can express; that is decode/greedy's job.
// Any positive value is safe: when logit / value leaves the float range (a temperature like
// 1e-30), the row is shifted so that its largest logit is 0 first (softmax does not change), so
// every other token lands at a large negative value or -inf and the argmax takes all the mass.
// Ownership: stateless apart from its option; const and thread-safe.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "nnkit/backend.h"
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
    // Divided in double, not multiplied by a float 1/value: 1/1e-40 is inf in float, and
    // inf * 0 is NaN, and -inf (a filtered token) * 0 (1/1e300 in float) is NaN too.
    constexpr double kFloatMax = std::numeric_limits<float>::max();
    double max_logit = -std::numeric_limits<double>::infinity();
    bool overflows = false;
    for (const float x : logits) {
      if (!std::isfinite(x)) continue;  // -inf stays -inf, NaN stays NaN, +inf stays +inf
      max_logit = std::max(max_logit, static_cast<double>(x));
      overflows = overflows || std::fabs(x / value_) > kFloatMax;
    }
    // Unshifted when it fits, so that a later sampler that is not shift-invariant (the
    // repetition penalty) sees what it always saw.
    const double shift = overflows ? max_logit : 0.0;
    for (float& x : logits) {
      if (!std::isfinite(x)) continue;
      const double scaled = (static_cast<double>(x) - shift) / value_;
      // Only negative values can still be out of range after the shift; converting one to
      // float is undefined, and its probability is 0 anyway.
      x = scaled < -kFloatMax ? -std::numeric_limits<float>::infinity()
                              : static_cast<float>(scaled);
    }
  }

  bool apply_device(Backend& backend, const Tensor& logits,
                    const DeviceSamplingContext&) const override {
    backend.temperature_rows(logits, value_);  // the same rule, shift included
    return true;
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
