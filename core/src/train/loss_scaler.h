// Purpose: dynamic loss scaling for fp16 training. fp16 has 5 exponent bits: small gradients
// underflow to zero unless the loss is multiplied by a large scale before backward (and the
// gradients divided by it before the update). Too large a scale overflows instead; the scaler
// finds the largest scale that works: it halves the scale on every step whose gradients are not
// finite (the step is skipped) and doubles it after `growth_interval` clean steps in a row.
//
// The protocol, once per optimizer step:
//   backward(loss * scale()); unscale the gradients by 1 / scale(); check them;
//   if (scaler.update(found_non_finite)) skip the update, else apply it.
//
// Disabled (bf16, fp32: f32's exponent range, nothing underflows), scale() is 1 forever and
// update() never asks for a skip: non-finite gradients are then NOT the scaler's business; the
// trainer's own rule (skip the step, stop after train.max_bad_steps in a row) handles them.
//
// Enabled, the scale lives in [min_scale, max_scale]. It may fall below 1 (a gradient that
// overflows fp16 even unscaled is rare but possible); the floor min_scale = 2^-24 is far below any
// useful scale. A caller that wants to tell "fp16 overflowed" from "the run diverged" treats a
// skip that leaves scale() < 1 as a bad step (the trainer does): when halving the scale to below 1
// did not help, the gradients are not finite at any scale.
//
// State that a checkpoint must carry (scale, counters, options) round-trips through save() and
// restore(); restore() refuses malformed text with an IoError that says what is wrong.
//
// Thread-safety: none; a value type owned by one training loop. Copyable.
#pragma once

#include <cstdint>
#include <string>

#include "nnkit/export.h"

namespace nnkit {

struct LossScalerOptions {
  float initial_scale = 65536.0f;        // 2^16, the default of PyTorch's GradScaler
  int64_t growth_interval = 2000;        // clean steps in a row before the scale grows
  float growth_factor = 2.0f;            // > 1
  float backoff_factor = 0.5f;           // in (0, 1): applied on every skipped step
  float min_scale = 1.0f / 16777216.0f;  // 2^-24: the floor; backoff stops there
  float max_scale = 16777216.0f;         // 2^24: the ceiling; keeps the scale finite
};

class NNKIT_API LossScaler {
 public:
  // enabled = fp16 dynamic scaling; disabled = scale fixed at 1, update() never skips.
  // Throws ConfigError("loss_scaler") for options outside the ranges above.
  explicit LossScaler(bool enabled, const LossScalerOptions& options = {});

  bool enabled() const { return enabled_; }
  const LossScalerOptions& options() const { return options_; }

  // The factor the loss is multiplied by before backward (1 when disabled).
  float scale() const { return scale_; }

  // Reports one step's gradients. Returns true when the step must be skipped (enabled and
  // found_non_finite): the scale is multiplied by backoff_factor (not below min_scale) and the
  // clean-step counter restarts. A clean step counts towards growth: the growth_interval-th clean
  // step in a row multiplies the scale by growth_factor (not above max_scale) and restarts the
  // counter. Disabled: returns false and changes nothing.
  bool update(bool found_non_finite);

  // Steps skipped for non-finite gradients since the run started (carried by save/restore).
  int64_t skipped_steps() const { return skipped_steps_; }
  // Clean steps in a row since the scale last changed (or was last held at max_scale): the
  // growth counter, in [0, growth_interval).
  int64_t clean_steps() const { return clean_steps_; }

  // One line of text holding everything above (a JSON object, format version 1).
  std::string save() const;
  // The scaler save() described. Throws IoError("loss_scaler") naming the problem when `state` is
  // not such a line (not JSON, another version, a missing or mistyped field, a value out of
  // range).
  static LossScaler restore(const std::string& state);

 private:
  bool enabled_;
  LossScalerOptions options_;
  float scale_;
  int64_t clean_steps_ = 0;
  int64_t skipped_steps_ = 0;
};

}  // namespace nnkit
