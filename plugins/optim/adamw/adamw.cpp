// Purpose: `optim/adamw`: Adam with decoupled weight decay (Loshchilov & Hutter). The arithmetic
// is the backend's: adamw_update_multi (every parameter in a few launches, clip factor from the
// device-side gradient norm) in training, adamw_update per tensor through step(); this plugin owns
// the hyperparameters, the step count and the moment tensors, and decides which parameters decay.
// Ownership: owns m ("exp_avg") and v ("exp_avg_sq") per parameter, keyed by parameter name and
// allocated lazily (zeros, f32) on the backend it is first given; never owns the parameters.
// Thread-safety: none; the trainer's thread drives it.
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "nnkit/error.h"
#include "nnkit/optim.h"
#include "nnkit/plugin.h"

namespace nnkit::optim {
namespace {

class AdamW final : public Optimizer {
 public:
  explicit AdamW(const Options& options)
      : lr_(options.get_float("lr")),
        beta1_(options.get_float("beta1")),
        beta2_(options.get_float("beta2")),
        eps_(options.get_float("eps")),
        weight_decay_(options.get_float("weight_decay")),
        decay_norms_and_embeddings_(options.get_bool("decay_norms_and_embeddings")) {
    // The declared ranges are inclusive; these are the exclusive ends they cannot express.
    if (!(lr_ > 0.0)) options.fail("lr", "must be > 0");
    if (!(beta1_ >= 0.0 && beta1_ < 1.0)) options.fail("beta1", "must be in [0, 1)");
    if (!(beta2_ >= 0.0 && beta2_ < 1.0)) {
      options.fail("beta2", "must be in [0, 1) (at 1 the second moment never updates)");
    }
    if (!(eps_ > 0.0)) options.fail("eps", "must be > 0 (it keeps the update finite where v = 0)");
    if (!(weight_decay_ >= 0.0)) options.fail("weight_decay", "must be >= 0");
  }

  double base_lr() const override { return lr_; }
  int64_t step_count() const override { return step_count_; }

  void set_step_count(int64_t steps) override {
    if (steps < 0)
      throw Error(id(), "step count cannot be negative (" + std::to_string(steps) + ")");
    step_count_ = steps;
  }

  void step(Backend& backend, const std::vector<Parameter*>& params, double lr,
            float grad_scale) override {
    AdamWStep update = next_step(lr, grad_scale);
    for (Parameter* param : params) {
      Moments& moments = checked_moments(backend, *param);
      update.weight_decay = decays(*param) ? static_cast<float>(weight_decay_) : 0.0f;
      backend.adamw_update(param->value, param->grad, moments.exp_avg, moments.exp_avg_sq, update);
    }
  }

  void step_on_device(Backend& backend, const std::vector<Parameter*>& params, double lr,
                      const Tensor& grad_sum_squares, float max_grad_norm,
                      float inv_loss_scale) override {
    prepare_device_step(backend, params, lr, inv_loss_scale);
    enqueue_device_step(backend, params, grad_sum_squares, max_grad_norm);
  }

  bool capturable() const override { return true; }

  void prepare_device_step(Backend& backend, const std::vector<Parameter*>&, double lr,
                           float inv_loss_scale) override {
    pending_ = next_step(lr, inv_loss_scale);
    // What changes from step to step goes to device memory, where a replayed graph reads it.
    const double s = static_cast<double>(pending_.step);
    const float host[4] = {
        pending_.lr, static_cast<float>(1.0 / (1.0 - std::pow(double(pending_.beta1), s))),
        static_cast<float>(1.0 / (1.0 - std::pow(double(pending_.beta2), s))), pending_.grad_scale};
    if (!scalars_.defined() || scalars_.device() != backend.device()) {
      scalars_ = backend.empty({4});
    }
    backend.copy_from_host(scalars_, host);
    pending_.scalars = scalars_;
  }

  void enqueue_device_step(Backend& backend, const std::vector<Parameter*>& params,
                           const Tensor& grad_sum_squares, float max_grad_norm) override {
    // All parameters in one multi-tensor update: the clip factor comes from the device-side
    // norm, the compute copies are refreshed and the grads zeroed in the same pass.
    if (!pending_.scalars.defined()) {
      throw Error(id(), "enqueue_device_step() needs a preceding prepare_device_step()");
    }
    std::vector<AdamWTensor> tensors;
    tensors.reserve(params.size());
    for (Parameter* param : params) {
      Moments& moments = checked_moments(backend, *param);
      AdamWTensor t;
      t.param = param->value;
      t.grad = param->grad;
      t.exp_avg = moments.exp_avg;
      t.exp_avg_sq = moments.exp_avg_sq;
      t.compute_copy = param->compute;
      t.weight_decay = decays(*param) ? static_cast<float>(weight_decay_) : 0.0f;
      tensors.push_back(std::move(t));
    }
    backend.adamw_update_multi(tensors, pending_, grad_sum_squares, max_grad_norm);
  }

  std::vector<std::pair<std::string, Tensor>> state(
      Backend& backend, const std::vector<Parameter*>& params) override {
    std::vector<std::pair<std::string, Tensor>> named;
    named.reserve(2 * params.size());
    for (Parameter* param : params) {
      Moments& moments = moments_of(backend, *param);
      named.emplace_back("exp_avg." + param->name, moments.exp_avg);
      named.emplace_back("exp_avg_sq." + param->name, moments.exp_avg_sq);
    }
    return named;
  }

 private:
  struct Moments {
    Tensor exp_avg;     // m, (param shape) f32
    Tensor exp_avg_sq;  // v, (param shape) f32
  };

  // Counts one more update and returns its hyperparameters (weight decay is per parameter).
  AdamWStep next_step(double lr, float grad_scale) {
    ++step_count_;
    AdamWStep update;
    update.lr = static_cast<float>(lr);
    update.beta1 = static_cast<float>(beta1_);
    update.beta2 = static_cast<float>(beta2_);
    update.eps = static_cast<float>(eps_);
    update.grad_scale = grad_scale;
    update.step = step_count_;
    return update;
  }

  // The moments of a parameter that has a gradient tensor (else a ShapeError naming it).
  Moments& checked_moments(Backend& backend, const Parameter& param) {
    if (!param.grad.defined()) {
      throw ShapeError(id(), "parameter '" + param.name + "' has no gradient tensor");
    }
    return moments_of(backend, param);
  }

  // Norm weights (Parameter::decay false) and embeddings are exempt unless the user opts in:
  // decaying a scale towards 0, or rarely seen token rows, hurts more than it regularises.
  bool decays(const Parameter& param) const {
    if (decay_norms_and_embeddings_) return true;
    return param.decay && !param.is_embedding;
  }

  Moments& moments_of(Backend& backend, const Parameter& param) {
    auto it = moments_.find(param.name);
    if (it == moments_.end()) {
      Moments fresh{backend.zeros(param.shape), backend.zeros(param.shape)};
      it = moments_.emplace(param.name, std::move(fresh)).first;
    } else if (it->second.exp_avg.shape() != param.shape) {
      // Two parameters sharing a name would silently share moments; refuse instead.
      throw ShapeError(id(), "parameter '" + param.name + "' has shape " + to_string(param.shape) +
                                 " but its optimizer state has " +
                                 to_string(it->second.exp_avg.shape()));
    }
    return it->second;
  }

  double lr_;
  double beta1_;
  double beta2_;
  double eps_;
  double weight_decay_;
  bool decay_norms_and_embeddings_;
  int64_t step_count_ = 0;
  std::unordered_map<std::string, Moments> moments_;
  AdamWStep pending_;  // the step prepare_device_step() set up for enqueue_device_step()
  Tensor scalars_;     // (4) f32 on the device: lr, bias corrections, grad scale (AdamWStep)
};

std::vector<OptionSpec> adamw_options() {
  return {
      {"lr", OptionType::kFloat, "1e-4", 0.0, std::nullopt,
       "peak learning rate (> 0); schedules multiply it"},
      {"beta1", OptionType::kFloat, "0.9", 0.0, 1.0, "first-moment decay, in [0, 1)"},
      {"beta2", OptionType::kFloat, "0.95", 0.0, 1.0, "second-moment decay, in [0, 1)"},
      {"eps", OptionType::kFloat, "1e-8", 0.0, std::nullopt,
       "added to sqrt(v_hat) in the denominator (> 0)"},
      {"weight_decay", OptionType::kFloat, "0.1", 0.0, std::nullopt,
       "decoupled weight decay (>= 0), applied as lr * weight_decay * p"},
      {"decay_norms_and_embeddings", OptionType::kBool, "false", std::nullopt, std::nullopt,
       "also decay norm weights and embeddings (exempt by default)"},
  };
}

Component* create_adamw(const CreateArgs& args) {
  return new AdamW(args.options);
}

}  // namespace
}  // namespace nnkit::optim

NNKIT_PLUGIN(optim, adamw, "0.1.0", "AdamW with bias correction and decoupled weight decay",
             &nnkit::optim::adamw_options, &nnkit::optim::create_adamw)
