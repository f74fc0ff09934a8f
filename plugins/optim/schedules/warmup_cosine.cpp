// Purpose: `schedule/warmup_cosine`: linear warmup to the peak, then half a cosine from 1 down
// to min_lr_ratio at the last step (the reference model's schedule).
// Ownership: stateless apart from its options; const and thread-safe.
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "nnkit/optim.h"
#include "nnkit/plugin.h"
#include "schedule_shape.h"

namespace nnkit::schedule {
namespace {

class WarmupCosine final : public Schedule {
 public:
  explicit WarmupCosine(const Options& options)
      : warmup_steps_(read_warmup_steps(options)), min_lr_ratio_(read_min_lr_ratio(options)) {}

  double factor(int64_t step, int64_t total_steps) const override {
    if (auto warming = warmup_factor(step, warmup_steps_)) return *warming;
    const double progress = decay_progress(step, total_steps, warmup_steps_);
    const double cosine = 0.5 * (1.0 + std::cos(std::numbers::pi * progress));  // 1 -> 0
    return min_lr_ratio_ + (1.0 - min_lr_ratio_) * cosine;
  }

 private:
  int64_t warmup_steps_;
  double min_lr_ratio_;
};

std::vector<OptionSpec> warmup_cosine_options() {
  return {warmup_steps_spec("100"), min_lr_ratio_spec("0.1")};
}

Component* create_warmup_cosine(const CreateArgs& args) {
  return new WarmupCosine(args.options);
}

}  // namespace
}  // namespace nnkit::schedule

NNKIT_PLUGIN(schedule, warmup_cosine, "0.1.0", "linear warmup, then cosine decay to min_lr_ratio",
             &nnkit::schedule::warmup_cosine_options, &nnkit::schedule::create_warmup_cosine)
