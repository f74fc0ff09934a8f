// Purpose: a deliberately broken sampler for `nnkit check-plugin` (tests/sdk): decode/bad_device
// halves the logits on the host (a temperature of 2) but its device path scales them by 0.25, so
// the check "device path equals host path" must fail while every host check passes.
#include <span>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/plugin.h"
#include "nnkit/sampler.h"

namespace {

class BadDevice final : public nnkit::Sampler {
 public:
  void apply(std::span<float> logits, const std::vector<int32_t>&) const override {
    for (float& v : logits) v *= 0.5f;
  }
  bool apply_device(nnkit::Backend& backend, const nnkit::Tensor& logits,
                    const nnkit::DeviceSamplingContext&) const override {
    backend.scale(logits, 0.25f);
    return true;
  }
};

std::vector<nnkit::OptionSpec> no_options() {
  return {};
}

nnkit::Component* create_bad_device(const nnkit::CreateArgs&) {
  return new BadDevice();
}

}  // namespace

NNKIT_PLUGIN(decode, bad_device, "0.0.1", "device path disagrees with the host path", &no_options,
             &create_bad_device)
