// Purpose: `schedule/linear`: optional linear warmup, then a straight line from the peak down to
// min_lr_ratio at the last step.
// Ownership: stateless apart from its options; const and thread-safe.
#include <cstdint>
#include <vector>

#include "nnkit/optim.h"
#include "nnkit/plugin.h"
#include "schedule_shape.h"

namespace nnkit::schedule {
namespace {

class Linear final : public Schedule {
 public:
  explicit Linear(const Options& options)
      : warmup_steps_(read_warmup_steps(options)), min_lr_ratio_(read_min_lr_ratio(options)) {}

  double factor(int64_t step, int64_t total_steps) const override {
    if (auto warming = warmup_factor(step, warmup_steps_)) return *warming;
    const double progress = decay_progress(step, total_steps, warmup_steps_);
    return 1.0 - (1.0 - min_lr_ratio_) * progress;
  }

 private:
  int64_t warmup_steps_;
  double min_lr_ratio_;
};

std::vector<OptionSpec> linear_options() {
  return {warmup_steps_spec("0"), min_lr_ratio_spec("0.0")};
}

Component* create_linear(const CreateArgs& args) {
  return new Linear(args.options);
}

}  // namespace
}  // namespace nnkit::schedule

NNKIT_PLUGIN(schedule, linear, "0.1.0", "optional linear warmup, then linear decay to min_lr_ratio",
             &nnkit::schedule::linear_options, &nnkit::schedule::create_linear)
