// Purpose: `decode/greedy`, the argmax sampler. It changes no logits; selects_argmax() tells the
// generator to take the argmax after the chain instead of drawing from the softmax, so greedy
// composes with filters (e.g. repetition_penalty then greedy).
// Ownership: stateless; const and thread-safe.
#include <cstdint>
#include <span>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/plugin.h"
#include "nnkit/sampler.h"

namespace nnkit::decode {
namespace {

class GreedySampler final : public Sampler {
 public:
  void apply(std::span<float>, const std::vector<int32_t>&) const override {}
  bool selects_argmax() const override { return true; }
  // Nothing to transform: the argmax is sample_rows' job.
  bool apply_device(Backend&, const Tensor&, const DeviceSamplingContext&) const override {
    return true;
  }
};

std::vector<OptionSpec> greedy_options() {
  return {};
}

Component* create_greedy(const CreateArgs&) {
  return new GreedySampler();
}

}  // namespace
}  // namespace nnkit::decode

NNKIT_PLUGIN(decode, greedy, "0.1.0", "argmax decoding (deterministic)",
             &nnkit::decode::greedy_options, &nnkit::decode::create_greedy)
