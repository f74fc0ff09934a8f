// Purpose: the arithmetic every `schedule/*` plugin shares: a linear warmup to the peak (factor 1)
// and the progress of the decay that follows, plus the option specs they declare alike.
// A schedule is warmup for steps [0, warmup), then decays over [warmup, total - 1]: progress 0 at
// the first decay step, 1 at the last step (total - 1) and beyond (steps past the end clamp to the
// final value).
// Ownership: free functions; no state.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "nnkit/options.h"

namespace nnkit::schedule {

// (step + 1) / warmup during warmup, so the first step already moves and step warmup - 1 reaches
// the peak; std::nullopt once warmup is over.
inline std::optional<double> warmup_factor(int64_t step, int64_t warmup_steps) {
  if (step < warmup_steps) {
    return static_cast<double>(std::max<int64_t>(step, 0) + 1) / static_cast<double>(warmup_steps);
  }
  return std::nullopt;
}

// Fraction of the decay done at `step` (>= warmup_steps), in [0, 1]. Without a horizon
// (total_steps <= 0) there is nothing to decay towards, so the schedule stays at its peak (0).
// When warmup leaves no room to decay (total - 1 <= warmup), the decay is already done (1).
inline double decay_progress(int64_t step, int64_t total_steps, int64_t warmup_steps) {
  if (total_steps <= 0) return 0.0;
  const int64_t last_step = total_steps - 1;
  const int64_t decay_span = last_step - warmup_steps;
  if (decay_span <= 0 || step >= last_step) return 1.0;
  return static_cast<double>(step - warmup_steps) / static_cast<double>(decay_span);
}

inline OptionSpec warmup_steps_spec(const std::string& default_value) {
  return {"warmup_steps", OptionType::kInt,
          default_value,  0.0,
          std::nullopt,   "steps of linear warmup from lr/warmup_steps up to the peak lr"};
}

inline OptionSpec min_lr_ratio_spec(const std::string& default_value) {
  return {"min_lr_ratio",
          OptionType::kFloat,
          default_value,
          0.0,
          1.0,
          "final learning rate as a fraction of the peak, reached at the last step"};
}

// Reads and re-checks the options (the core checks declared ranges; a caller building Options by
// hand does not).
inline int64_t read_warmup_steps(const Options& options) {
  const int64_t steps = options.get_int("warmup_steps");
  if (steps < 0) options.fail("warmup_steps", "must be >= 0");
  return steps;
}

inline double read_min_lr_ratio(const Options& options) {
  const double ratio = options.get_float("min_lr_ratio");
  if (!(ratio >= 0.0 && ratio <= 1.0)) options.fail("min_lr_ratio", "must be in [0, 1]");
  return ratio;
}

}  // namespace nnkit::schedule
