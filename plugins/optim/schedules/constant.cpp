// Purpose: `schedule/constant`: optional linear warmup, then the peak learning rate throughout.
// Ownership: stateless apart from its option; const and thread-safe.
#include <cstdint>
#include <vector>

#include "nnkit/optim.h"
#include "nnkit/plugin.h"
#include "schedule_shape.h"

namespace nnkit::schedule {
namespace {

class Constant final : public Schedule {
 public:
  explicit Constant(const Options& options) : warmup_steps_(read_warmup_steps(options)) {}

  double factor(int64_t step, int64_t) const override {
    return warmup_factor(step, warmup_steps_).value_or(1.0);
  }

 private:
  int64_t warmup_steps_;
};

std::vector<OptionSpec> constant_options() {
  return {warmup_steps_spec("0")};
}

Component* create_constant(const CreateArgs& args) {
  return new Constant(args.options);
}

}  // namespace
}  // namespace nnkit::schedule

NNKIT_PLUGIN(schedule, constant, "0.1.0", "optional linear warmup, then a constant learning rate",
             &nnkit::schedule::constant_options, &nnkit::schedule::create_constant)
