// Purpose: the `decode/*` interface. Samplers form a chain: each step transforms one row of
// logits in place (filters set excluded entries to -inf); after the chain the generator takes the
// argmax if any step selects_argmax() (greedy), otherwise it samples from softmax(logits) with the
// run's seeded generator.
// Two paths (ABI 3): apply() on one host row, and apply_device() on all rows at once with backend
// ops, where the logits stay (see nnkit/device_sampling.h for the chain runner). A sampler that
// only has the host path keeps the default apply_device(), which declines; the generator then
// runs that chain on the host.
// Ownership: stateless between calls apart from their options; const and thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "nnkit/component.h"
#include "nnkit/tensor.h"

namespace nnkit {

class Backend;

// What the device path of a sampler may read besides the logits, all on the backend's device.
// Every field may be undefined; a sampler that needs one that is not there declines.
struct DeviceSamplingContext {
  // (B, L) i32: row b's history (BOS, the prompt, the ids generated so far) is
  // history[b, 0 : lengths[b]]; the rest of the row is unused. L is the capacity.
  Tensor history;
  Tensor lengths;  // (B) i32, 0 <= lengths[b] <= L
  // (1) i32: the decode step, read at run time by sample_rows instead of the host step (a
  // CUDA Graph replays the same launch every token); append_tokens advances it.
  Tensor step;
};

class NNKIT_API Sampler : public Component {
 public:
  ~Sampler() override;
  // logits: one row of V values (host); history: prompt and generated ids of this sequence.
  virtual void apply(std::span<float> logits, const std::vector<int32_t>& history) const = 0;
  virtual bool selects_argmax() const { return false; }
  // The device path: transform every row of `logits` ((B, V) f32 on `backend`'s device) in
  // place with backend ops, exactly as apply() would each row (the same kept tokens; values equal
  // up to the rounding apply() documents), enqueuing work only: no copy to the host, no waiting,
  // no copy_from_host (the call may be recorded in a CUDA Graph and replayed for later tokens,
  // so everything that changes per token must come from `ctx`'s tensors). Return false, before
  // enqueuing anything, when there is no device path (the default) or `ctx` lacks what it needs;
  // the answer must depend only on the sampler's options and which fields of `ctx` are defined,
  // so that a caller may ask once per generation.
  virtual bool apply_device(Backend& /*backend*/, const Tensor& /*logits*/,
                            const DeviceSamplingContext& /*ctx*/) const {
    return false;
  }
};

}  // namespace nnkit
