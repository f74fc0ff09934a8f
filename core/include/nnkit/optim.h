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
  // One update with the global gradient norm and clip factor computed on the device (nothing
  // crosses to the host). grad_sum_squares: (1) f32 = sum of g^2 over every parameter's grad as
  // stored; grads are multiplied by inv_loss_scale first (fp16 loss scaling, else 1), then
  // clipped to max_grad_norm (<= 0: no clipping). A non-finite sum skips the update on the
  // device: parameters, moments and grads are untouched (the caller learns it by reading the sum
  // afterwards, restores the step count it had before with set_step_count, and zeroes the
  // grads). After a taken step every grad is zero and every Parameter::compute copy matches its
  // value. The default reads the sum to the host, then calls step(), refreshes the compute
  // copies and zeroes the grads: correct for any optimizer, fused for none.
  virtual void step_on_device(Backend& backend, const std::vector<Parameter*>& params, double lr,
                              const Tensor& grad_sum_squares, float max_grad_norm,
                              float inv_loss_scale);
  // CUDA Graphs. A capturable optimizer splits step_on_device() in two: prepare_device_step()
  // counts the step and uploads what changes between steps (learning rate, bias corrections, loss
  // scale) to device memory, outside any capture and before every replay;
  // enqueue_device_step() enqueues the update reading those values from device memory, so a
  // graph that recorded it replays it correctly every step. The defaults say "not capturable".
  virtual bool capturable() const { return false; }
  virtual void prepare_device_step(Backend& backend, const std::vector<Parameter*>& params,
                                   double lr, float inv_loss_scale);
  virtual void enqueue_device_step(Backend& backend, const std::vector<Parameter*>& params,
                                   const Tensor& grad_sum_squares, float max_grad_norm);
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
