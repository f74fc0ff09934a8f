// Purpose: the `decode/*` interface. Samplers form a chain: each step transforms one row of
// logits in place (filters set excluded entries to -inf); after the chain the generator takes the
// argmax if any step selects_argmax() (greedy), otherwise it samples from softmax(logits) with the
// run's seeded generator.
// Ownership: stateless between calls apart from their options; const and thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "nnkit/component.h"

namespace nnkit {

class NNKIT_API Sampler : public Component {
 public:
  ~Sampler() override;
  // logits: one row of V values (host); history: prompt and generated ids of this sequence.
  virtual void apply(std::span<float> logits, const std::vector<int32_t>& history) const = 0;
  virtual bool selects_argmax() const { return false; }
};

}  // namespace nnkit
