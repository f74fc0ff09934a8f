// Purpose: the `optim/*` (optimizer) and `schedule/*` (learning-rate schedule) interfaces.
// Ownership: an optimizer owns its state tensors (allocated lazily on the parameters' backend) and
// never the parameters themselves. state() exposes the state as named tensors for checkpoints.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "nnkit/backend.h"
#include "nnkit/component.h"
#include "nnkit/layer.h"

namespace nnkit {

class NNKIT_API Optimizer : public Component {
 public:
  ~Optimizer() override;
  // The peak learning rate from the optimizer's options; schedules multiply it.
  virtual double base_lr() const = 0;
  // One update of every parameter from its grad, multiplied by grad_scale first.
  virtual void step(Backend& backend, const std::vector<Parameter*>& params, double lr,
                    float grad_scale) = 0;
  // Updates taken so far (restored from checkpoints).
  virtual int64_t step_count() const = 0;
  virtual void set_step_count(int64_t steps) = 0;
  // Named state tensors ("exp_avg.<param name>", ...), allocating them if needed, in a fixed
  // order; checkpoints save them and restore by copying into the same tensors.
  virtual std::vector<std::pair<std::string, Tensor>> state(
      Backend& backend, const std::vector<Parameter*>& params) = 0;
};

class NNKIT_API Schedule : public Component {
 public:
  ~Schedule() override;
  // Multiplier of the base learning rate at 0-based `step` of `total_steps`.
  virtual double factor(int64_t step, int64_t total_steps) const = 0;
};

}  // namespace nnkit
